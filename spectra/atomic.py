"""Atomic folder writes: build under a temporary name, then rename into place.

A reader sees either the previous folder or the complete new one, never half
of it; a failure leaves no temporary folder behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ReportExistsError

__all__ = ["check_replaceable", "replace_folder"]


def check_replaceable(
    out: str | os.PathLike, force: bool, marker: str, what: str, flag: str = "--out"
) -> None:
    """Raise ``ReportExistsError`` unless ``replace_folder(out)`` may run.

    A missing or empty folder is fine. A folder holding ``marker`` (a file or
    folder spectra writes there, naming it a ``what``) is replaced only with
    ``force``; a folder of anything else, or a file, is never replaced.
    """
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise ReportExistsError(f"{out}: exists and is not a folder; choose another {flag}")
    if not any(out.iterdir()):
        return
    if not (out / marker).exists():
        raise ReportExistsError(
            f"{out}: folder exists and is not a spectra {what}; spectra will not replace it, "
            f"even with --force: choose another {flag}"
        )
    if not force:
        raise ReportExistsError(f"{out}: a {what} is already there; pass --force to replace it")


@contextmanager
def replace_folder(out: Path) -> Iterator[Path]:
    """Yield a staging folder beside ``out``; on success it replaces ``out`` whole.

    Callers decide beforehand whether ``out`` may be replaced. An existing
    ``out`` is moved aside, the staging folder renamed, and the old one
    removed; if the rename fails, the old folder is put back.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
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
