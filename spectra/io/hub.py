"""Checkpoints named by Hugging Face Hub id, found without turning a typo into a download.

``locate(source, flag)`` turns what a user wrote into a ``Source``: a local
path, and for a Hub id the id, the revision asked for and the commit of the
snapshot found. Three spellings:

- an existing path is taken as it is;
- ``hf://org/name[@revision]`` (also ``hf:org/name``) asks for the Hub. With
  ``huggingface_hub`` installed (the ``hub`` extra) its ``snapshot_download``
  fetches what the cache lacks, weights and configs only (``*.json``,
  ``*.safetensors``, ``*.bin``, ``*.pt``, never optimizer states), or reads
  the cache alone when ``HF_HUB_OFFLINE`` is set; without it spectra reads the
  cache itself and says how to install the extra if the id is not there;
- a bare ``org/name[@revision]`` that is no existing path is looked up in the
  local cache only, by spectra itself: no network, no ``huggingface_hub``. So
  ``ckpts/lroa``, a mistyped folder, is "no such file or folder" (and not in
  the cache either; write ``hf://ckpts/lroa`` to download it), never a request.

Any other path that does not exist is "no such file or folder". The cache is
``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``, read
at call time (layout ``models--org--name/refs/<revision>`` →
``snapshots/<commit>/``).

Each entry point (``load``, ``analyze``, ``compare``, ``run_sweep``) locates
its sources once and passes the ``Source`` down; ``locate`` returns a
``Source`` it is given as it is, so an id is resolved once per run and the
commit a report records is the one it analysed. ``Source`` is ``os.PathLike``
(its local path), so it goes wherever a path does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..arguments import Argument
from ..errors import FormatError

__all__ = [
    "Source",
    "cache_folder",
    "locate",
    "offline",
    "resolve_cached",
]

_HUB_ID = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$"
)
# hf://org/name, hf:org/name; also hf:/org/name, which is what pathlib makes of hf://org/name.
_DOWNLOAD = re.compile(r"^hf:/{0,2}(?P<id>.*)$")
_FETCHED = ["*.json", "*.safetensors", "*.bin", "*.pt"]
_NOT_FETCHED = ["optimizer.*", "scheduler.*", "rng_state*", "training_args.bin"]
_EXPECTED = {"base": "the base model's folder or file"}  # by argument name


@dataclass(frozen=True)
class Source:
    """A checkpoint source resolved to a local path.

    ``hub_id`` (``org/name``), ``revision`` (as asked; None for the default
    branch) and ``commit`` (the snapshot found) are None for a local path.
    """

    path: Path
    hub_id: str | None = None
    revision: str | None = None
    commit: str | None = None

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return os.fspath(self.path)


def cache_folder() -> Path:
    """The Hub cache folder, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for the cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _cached(match: re.Match) -> Path | None:
    repo = cache_folder() / f"models--{match['repo'].replace('/', '--')}"
    revision = match["revision"] or "main"
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def resolve_cached(source: str) -> Path | None:
    """The cached snapshot folder of a bare Hub id, read without ``huggingface_hub``; else None."""
    match = _HUB_ID.match(source)
    return _cached(match) if match is not None else None


def locate(source: str | os.PathLike, flag: Argument | str) -> Source:
    """The local ``Source`` of a path or Hub id (module docstring); ``FormatError`` if none.

    ``flag`` names the argument in messages (``CKPT``, ``--base``). Only an
    ``hf://`` id can reach the network.
    """
    if isinstance(source, Source):
        return source
    text = os.fspath(source)
    explicit = _DOWNLOAD.match(text)
    if explicit is not None:
        return _download(text, explicit["id"], flag)
    path = Path(text)
    if path.exists():
        return Source(path)
    expected = _EXPECTED.get(getattr(flag, "name", flag), "a checkpoint folder or file")
    match = _HUB_ID.match(text)
    if match is None:
        raise FormatError(f"{text} ({flag}): no such file or folder (expected {expected})")
    found = _cached(match)
    if found is None:
        write = flag(f"hf://{text}") if isinstance(flag, Argument) else f"hf://{text}"
        raise FormatError(
            f"{text} ({flag}): no such file or folder (expected {expected}); it is not in the "
            f"local Hugging Face cache ({cache_folder()}) either; to download it from the Hub, "
            f"write {write}"
        )
    return Source(found, match["repo"], match["revision"], found.name)


def _download(text: str, hub_id: str, flag: Argument | str) -> Source:
    """The snapshot of an ``hf://`` id: downloaded with ``huggingface_hub``, else from the cache."""
    match = _HUB_ID.match(hub_id)
    if match is None:
        raise FormatError(
            f"{text} ({flag}): not a Hub id; expected hf://org/name or hf://org/name@revision"
        )
    try:
        import huggingface_hub
    except ImportError:
        found = _cached(match)
        if found is None:
            raise FormatError(
                f"{text} ({flag}): not in the local Hugging Face cache ({cache_folder()}), and "
                "downloading it needs huggingface_hub: pip install 'spectra[hub]'"
            ) from None
        return Source(found, match["repo"], match["revision"], found.name)
    try:
        folder = huggingface_hub.snapshot_download(
            match["repo"],
            revision=match["revision"],
            cache_dir=cache_folder(),
            local_files_only=offline(),
            allow_patterns=_FETCHED,
            ignore_patterns=_NOT_FETCHED,
        )
    except Exception as exc:  # the hub raises many kinds: missing, offline, gated, network
        reason = " ".join(str(exc).strip().splitlines()[:1]).strip()[:200]
        if offline():
            where = (
                f"not in the local Hugging Face cache ({cache_folder()}), and HF_HUB_OFFLINE is "
                "set, so nothing was downloaded; unset it to download"
            )
        else:
            where = f"could not be downloaded from the Hub into {cache_folder()}"
        raise FormatError(f"{text} ({flag}): {where} ({type(exc).__name__}: {reason})") from exc
    folder = Path(folder)
    return Source(folder, match["repo"], match["revision"], folder.name)
