"""Atomic folder writes: build under a temporary name, then rename into place.

A reader sees either the previous folder or the complete new one, never half
of it; a failure leaves no temporary folder behind. The folder gets the mode
``mkdir`` gives (0o777 less the umask), not ``mkdtemp``'s 0o700, so that
colleagues on a shared server can read a report as they read any other folder.
``write_safetensors`` writes a safetensors file with ``open``'s mode for the
same reason (safetensors' ``save_file`` leaves its own temporary file's 0o600).
``write_text_atomic`` writes one text file (the HTML page) the same way as
the folders: under a temporary name beside it, then renamed.

Before any write, ``check_output`` says whether the output may be written:
the one "may I write here" rule of every writer (reports, comparisons,
sweeps, adapter and MultiLoRA folders, suggestion files, HTML pages, the
demo's folder). ``force`` replaces only what spectra wrote — a folder holding
the marker its writer leaves (``report.json``, ``summary.csv``,
``OUTPUT_MARKER`` in adapter folders, …), a file its writer recognises as its
own — never anything else, and never an output that is, holds or lies inside
one of the sources being read.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..arguments import FORCE, OUT, Argument
from ..errors import ReportExistsError

__all__ = [
    "OUTPUT_MARKER",
    "check_apart",
    "check_output",
    "holds",
    "mark_output",
    "replace_folder",
    "write_safetensors",
    "write_text_atomic",
]

# Left in every folder spectra writes that has no file of spectra's own to tell it by
# (adapter folders from resize / extract, MultiLoRA folders from convert): what a later
# ``--force`` may replace. A folder without it (a user's adapter, a Trainer checkpoint) never is.
OUTPUT_MARKER = "spectra-output.json"


def mark_output(folder: Path, what: str) -> None:
    """Write ``OUTPUT_MARKER`` into ``folder`` (a staging folder): spectra wrote this ``what``."""
    from .. import __version__

    marker = {"written_by": f"spectra {__version__}", "what": what}
    (folder / OUTPUT_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def check_apart(
    out: str | os.PathLike, sources: Iterable[str | os.PathLike], flag: Argument | str = OUT
) -> None:
    """Raise ``ReportExistsError`` if ``out`` is one of ``sources``, lies inside one or holds one.

    Replacing such an output would destroy what is being read.
    """
    target = Path(out).resolve()
    for source in sources:
        if source is None:
            continue
        source = Path(source).resolve()
        if target == source:
            where = "is"
        elif source in target.parents:
            where = "lies inside"
        elif target in source.parents:
            where = "holds"
        else:
            continue
        raise ReportExistsError(
            f"{out}: {where} the source {source}, which spectra is reading and will not write "
            f"over: choose another {flag}"
        )


def holds(marker: str) -> Callable[[Path], bool]:
    """An ``ours`` for ``check_output``: a folder is spectra's when ``marker`` is in it."""
    return lambda folder: (folder / marker).exists()


def check_output(
    out: str | os.PathLike,
    force: bool,
    what: str,
    ours: Callable[[Path], bool],
    *,
    folder: bool = True,
    flag: Argument | str = OUT,
    sources: Iterable[str | os.PathLike] = (),
) -> None:
    """Raise ``ReportExistsError`` unless a ``what`` may be written at ``out``: the one rule.

    ``out`` must be apart from every one of ``sources`` (``check_apart``). A
    missing output is fine, and so is an empty folder (``folder=True``: a
    folder is written, as ``replace_folder`` does; ``folder=False``: one file).
    An existing one is replaced only when ``ours(out)`` recognises it as
    spectra's (``holds(marker)`` for folders) and ``force`` is given; anything
    else — a folder of other files, a file spectra did not write, a folder
    where a file goes or a file where a folder goes — never is.
    """
    out = Path(out)
    check_apart(out, sources, flag)
    if not out.exists():
        return
    if folder and not out.is_dir():
        raise ReportExistsError(f"{out}: exists and is not a folder; choose another {flag}")
    if not folder and out.is_dir():
        raise ReportExistsError(
            f"{out}: is a folder, not {_article(what)} {what} file; choose another {flag}"
        )
    if folder and not any(out.iterdir()):
        return
    if not ours(out):
        kind = "folder exists" if folder else "exists"
        raise ReportExistsError(
            f"{out}: {kind} and is not a spectra {what}; spectra will not replace it, "
            f"even with {FORCE}: choose another {flag}"
        )
    if not force:
        raise ReportExistsError(
            f"{out}: {_article(what)} {what} is already there; pass {FORCE} to replace it"
        )


def _article(noun: str) -> str:
    """The article before ``noun``: "an adapter folder", "an HTML report", "a report"."""
    return "an" if noun[:1].lower() in "aeio" or noun.startswith("HTML") else "a"


@contextmanager
def replace_folder(out: Path) -> Iterator[Path]:
    """Yield a staging folder beside ``out``; on success it replaces ``out`` whole.

    Callers decide beforehand whether ``out`` may be replaced. An existing
    ``out`` is moved aside, the staging folder renamed, and the old one
    removed; if the rename fails, the old folder is put back.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_folder(out)
    try:
        yield staging
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        try:
            os.replace(staging, out)
        except OSError:
            if old is not None:
                os.replace(old, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``path`` in the safetensors format, mode 0o666 less the umask.

    ``safetensors.torch.save_file`` (0.8) writes a temporary file and renames
    it, so the file keeps mode 0o600 whatever the umask; this serialises to
    bytes and writes them with ``open``, as every other output file is written.
    Meant for files written into a staging folder or a fresh one (adapters,
    the demo's small models), whose size fits in memory twice.
    """
    from safetensors.torch import save

    path.write_bytes(save(tensors, metadata=metadata))
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to a new file beside ``path``, then rename it over ``path``.

    A reader sees the old file or the whole new one. The file gets ``open``'s
    mode (0o666 less the umask), as every other output file; the temporary
    one is removed if anything fails. Callers decide beforehand whether
    ``path`` may be replaced (``check_output``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        staging = path.parent / f".{path.name}.partial-{secrets.token_hex(6)}"
        try:
            handle = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(
            f"{path.parent}: no free name for a temporary file beside {path.name}"
        )
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def _staging_folder(out: Path) -> Path:
    """A new, empty ``.<name>.partial-<random>`` folder beside ``out``.

    Made with ``mkdir`` (mode 0o777 less the umask, as the final folder should
    have), not ``tempfile.mkdtemp``, which makes it 0o700 whatever the umask.
    """
    for _ in range(100):
        staging = out.parent / f".{out.name}.partial-{secrets.token_hex(6)}"
        try:
            staging.mkdir()
        except FileExistsError:
            continue
        return staging
    raise FileExistsError(f"{out.parent}: no free name for a staging folder beside {out.name}")
