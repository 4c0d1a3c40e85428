"""Ctrl-C on the command line: one line on stderr, no temporary output left, exit status 130.

By the time a ``KeyboardInterrupt`` reaches ``main``, the ``finally`` blocks of
spectra's atomic writes (``spectra.io.atomic``, the HTML page, the cache) have
removed their staging folders and files. A few bytecodes in each of them are
not covered (between making a staging folder and entering its ``try``, between
moving the old folder aside and renaming the new one into place), so this
module keeps a list of the temporaries that were beside each output when the
command started and, on an interrupt, removes the ones made since (and puts a
folder that was moved aside back where nothing replaced it).

The process then leaves with ``os._exit``, not ``sys.exit``: threads that read
ahead or decompose (``spectra.io.workers``) and torch's own intra-op threads
may still be inside torch, and a normal exit finalises the interpreter under
them, which ends those threads from inside C++ frames and aborts the process
(``terminate called without an active exception``, status 134, about one run
in two on 2 cores). Nothing is left to finalise: outputs are written only by
atomic renames, the checks above have run, and stdout and stderr are flushed
by hand. In-process callers (click's ``CliRunner``) get ``ctx.exit(130)``
instead, as ``main.SpectraGroup`` decides.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click

from . import deferred_interrupts

__all__ = ["OUTPUT_PARAMETERS", "leave", "tidy", "watch", "watching_outputs", "written"]

STATUS = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C ended
# the commands' parameters that name something they write (a folder or a file)
OUTPUT_PARAMETERS = ("out", "html_file", "dst")
# temporaries spectra's writes leave beside NAME while they run: .NAME.partial-<hex>
# (staging folders and files), .NAME.old-<pid> (the folder being replaced), .NAME.<pid>
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:partial-[0-9a-f]+|old-(?P<old>\d+)|(?P<pid>\d+))$")

# folder → (whether its subfolders are watched too, temporaries there when watching began)
_watched: dict[Path, tuple[bool, set[Path]]] = {}
# the running command's outputs, and when it started (time.time_ns)
_outputs: list[Path] = []
_started_ns = [0]


def watching_outputs(callback: Callable) -> Callable:
    """Wrap a command's callback so that the folders of its outputs are watched while it runs."""

    @functools.wraps(callback)
    def run(**params):
        _watched.clear()
        _outputs[:] = [params[n] for n in OUTPUT_PARAMETERS if isinstance(params.get(n), Path)]
        _started_ns[0] = time.time_ns()
        for output in _outputs:
            watch(output.parent)
        with deferred_interrupts():  # Ctrl-C inside torch's import would abort the process
            import torch  # noqa: F401  every command needs it; its import is what it waits for
        return callback(**params)

    return run


def written() -> list[str]:
    """The running command's outputs already in place (renamed there since it started)."""
    done = []
    for output in _outputs:
        try:
            changed = output.stat().st_mtime_ns >= _started_ns[0]
        except OSError:
            continue
        if changed:
            done.append(f"{output}/" if output.is_dir() else str(output))
    return done


def watch(folder: Path, subfolders: bool = False) -> None:
    """Remove, on an interrupt, temporaries made in ``folder`` (and its subfolders) from now on."""
    folder = Path(folder)
    _watched[folder] = (subfolders, set(_temporaries(folder, subfolders)))


def tidy() -> None:
    """Remove the temporaries made since watching began; put back a folder left moved aside."""
    for folder, (subfolders, before) in list(_watched.items()):
        for path in _temporaries(folder, subfolders):
            if path in before:
                continue
            match = _TEMPORARY.match(path.name)
            target = path.with_name(match["name"])
            try:
                if match["old"] and not target.exists():
                    os.replace(path, target)  # interrupted between the two renames: undo the first
                elif path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            except OSError:
                pass  # still one line and status 130; a stray temporary is named by nothing else
    _watched.clear()


def leave(message: str) -> NoReturn:
    """Tidy, print ``interrupted: <message>``, flush, and end the process at once (see above)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut this short
    tidy()
    click.secho(f"interrupted: {message}", fg="red", err=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(STATUS)


def _temporaries(folder: Path, subfolders: bool) -> list[Path]:
    """The temporaries spectra makes, in ``folder`` and (if asked) its subfolders."""
    folders = [folder]
    if subfolders:
        folders += _entries(folder, directories=True)
    found = []
    for where in folders:
        for path in _entries(where):
            match = _TEMPORARY.match(path.name)
            pid = match and (match["old"] or match["pid"])
            if match and (pid is None or int(pid) == os.getpid()):
                found.append(path)
    return found


def _entries(folder: Path, directories: bool = False) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return [
                Path(entry.path)
                for entry in entries
                if not directories or entry.is_dir(follow_symlinks=False)
            ]
    except OSError:  # not there (yet), or unreadable: nothing of ours in it
        return []
