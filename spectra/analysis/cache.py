"""A cache of reports keyed by the content of what was analysed and how.

The key of an analysis is the SHA-256 of:

- the spectra version (a new version may compute differently);
- the analysis parameters (format, modules, layers, method, loader options);
- the name and the SHA-256 of the content of every file the checkpoint reads
  (``Checkpoint.source_files()``: adapter or model weights, configs, the base).

So a checkpoint copied elsewhere is a hit, and one rewritten in place is a
miss, whatever its timestamps. Hashing a large base for every checkpoint of a
sweep would cost more than the analysis: file digests are remembered in
``file-hashes.json`` beside the reports, under the file's path, size,
modification time and inode, and recomputed when any of those changes.

Layout of a cache folder (``default_folder()`` unless given)::

    reports/<key[:2]>/<key>/   a saved Report (written atomically)
    file-hashes.json           remembered file digests
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from .. import __version__
from ..arguments import CACHE, NO_CACHE
from ..errors import SpectraError
from ..report import Report, is_report

__all__ = ["ReportCache", "analysis_key", "default_folder", "file_digest"]

_CHUNK = 8 << 20  # bytes read at a time while hashing


def default_folder() -> Path:
    """``$SPECTRA_CACHE``, else ``$XDG_CACHE_HOME/spectra``, else ``~/.cache/spectra``."""
    if os.environ.get("SPECTRA_CACHE"):
        return Path(os.environ["SPECTRA_CACHE"]).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root).expanduser() / "spectra"


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's content, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def analysis_key(files: Iterable[tuple[str, str]], parameters: Mapping[str, object]) -> str:
    """The cache key of an analysis; ``files`` holds (file name, content digest) pairs.

    Only names and contents count, not folders: a copied checkpoint is a hit.
    """
    payload = {"spectra": __version__, "parameters": parameters, "files": sorted(files)}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ReportCache:
    """Reports stored under their analysis key in ``folder``."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else default_folder()
        self._digests_file = self.folder / "file-hashes.json"
        self._digests: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"ReportCache({str(self.folder)!r})"

    def entry(self, key: str) -> Path:
        return self.folder / "reports" / key[:2] / key

    def get(self, key: str) -> Report | None:
        """The cached report for ``key``, or None; a damaged entry is a miss, not an error."""
        entry = self.entry(key)
        if not is_report(entry):
            return None
        try:
            return Report.load(entry)
        except SpectraError:
            return None

    def put(self, key: str, report: Report) -> Path:
        """Store ``report`` under ``key`` (replacing a damaged or older entry)."""
        try:
            return report.save(self.entry(key), force=True)
        except OSError as exc:
            raise SpectraError(
                f"{self.folder}: cannot write to the cache ({exc}); choose another with "
                f"{CACHE('DIR')} or turn it off with {NO_CACHE}"
            ) from exc

    # -- file digests ------------------------------------------------------

    def digests(self, files: Iterable[Path]) -> dict[str, str]:
        """``{resolved path: sha256}`` of each file, reusing digests of unchanged files."""
        known = self._load_digests()
        found = {}
        for path in files:
            resolved = path.resolve()
            stat = resolved.stat()
            stamp = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
            if stamp not in known:
                known[stamp] = file_digest(resolved)
            found[str(resolved)] = known[stamp]
        self._save_digests()
        return found

    def _load_digests(self) -> dict[str, str]:
        if self._digests is None:
            try:
                self._digests = dict(json.loads(self._digests_file.read_text()))
            except (OSError, ValueError, TypeError):
                self._digests = {}
        return self._digests

    def _save_digests(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            staging = self._digests_file.with_name(f".{self._digests_file.name}.{os.getpid()}")
            staging.write_text(json.dumps(self._digests, indent=0, sort_keys=True))
            os.replace(staging, self._digests_file)
        except OSError as exc:
            raise SpectraError(
                f"{self.folder}: cannot write to the cache ({exc}); choose another with "
                f"{CACHE('DIR')} or turn it off with {NO_CACHE}"
            ) from exc
