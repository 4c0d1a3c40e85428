"""Checkpoints named by Hugging Face Hub id (``org/name`` or ``org/name@revision``).

``resolve(source, flag)`` turns a path or a Hub id into a local folder:

- an existing path is returned as it is;
- an id is looked up in the local Hub cache (``HF_HUB_CACHE``, else
  ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), read at call time.
  With ``huggingface_hub`` installed (the ``hub`` extra) its
  ``snapshot_download`` does the lookup, and fetches what is missing unless
  ``HF_HUB_OFFLINE`` is set; without it, spectra reads the cache layout
  itself (``models--org--name/refs/<revision>`` → ``snapshots/<commit>/``)
  and never touches the network.

Only weights and configs are fetched (``*.json``, ``*.safetensors``,
``*.bin``, ``*.pt``), never optimizer states.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import FormatError

__all__ = ["cache_folder", "is_hub_id", "offline", "resolve", "resolve_cached"]

_HUB_ID = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$"
)
_FETCHED = ["*.json", "*.safetensors", "*.bin", "*.pt"]
_NOT_FETCHED = ["optimizer.*", "scheduler.*", "rng_state*", "training_args.bin"]


def is_hub_id(source: object) -> bool:
    """Whether ``source`` reads as ``org/name[@revision]`` and is not an existing path."""
    if not isinstance(source, str | os.PathLike):
        return False
    text = os.fspath(source)
    return (
        isinstance(text, str)
        and _HUB_ID.match(text) is not None
        and not Path(text).expanduser().exists()
    )


def cache_folder() -> Path:
    """The Hub cache folder, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for the cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def resolve_cached(source: str) -> Path | None:
    """The cached snapshot folder of a Hub id, read without ``huggingface_hub``; else None."""
    match = _HUB_ID.match(source)
    if match is None:
        return None
    repo = cache_folder() / f"models--{match['repo'].replace('/', '--')}"
    revision = match["revision"] or "main"
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def resolve(source: str | os.PathLike, flag: str) -> Path:
    """A local path for ``source``: itself if it exists, else its Hub snapshot folder.

    ``flag`` names the argument in messages (``CKPT``, ``--base``).
    """
    if not is_hub_id(source):
        return Path(source)
    source = os.fspath(source)
    match = _HUB_ID.match(source)
    assert match is not None
    try:
        import huggingface_hub
    except ImportError:
        found = resolve_cached(source)
        if found is None:
            raise FormatError(
                f"{source} ({flag}): no such folder, and not in the Hugging Face cache at "
                f"{cache_folder()}; download it first, or pip install 'spectra[hub]' to let "
                "spectra fetch it"
            ) from None
        return found
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
        where = "the local cache (HF_HUB_OFFLINE is set)" if offline() else "the Hub"
        raise FormatError(
            f"{source} ({flag}): no such folder, and it could not be found in {where} at "
            f"{cache_folder()}: {type(exc).__name__}: {exc}"
        ) from exc
    return Path(folder)
