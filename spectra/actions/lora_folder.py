"""A PEFT LoRA adapter folder written from factors: ``adapter_config.json`` and weights.

What ``resize`` and ``extract`` write, and what ``suggest`` proposes, in
PEFT's own terms (``peft.LoraConfig``; the layout is in docs/formats.md):

- ``r`` is the most common rank; ``rank_pattern`` gives every other module
  its own, keyed by the module's full path (PEFT matches a key ``k`` against
  module ``m`` when ``(.*\\.)?k$`` matches: a full path matches only itself);
- ``lora_alpha`` and ``alpha_pattern`` are chosen so that each module's scale
  α/r (α/√r with rsLoRA) is the one asked for: the scale the adapter was
  trained with (resize, suggest), or 1 (extract: B@A is ΔW itself);
- ``adapter_model.safetensors`` holds ``base_model.model.{module}.lora_A.weight``
  (r, d_in) and ``….lora_B.weight`` (d_out, r).

The folder is written atomically with ``io.atomic.OUTPUT_MARKER`` in it, and
replaces only an adapter folder spectra wrote, and only with ``force``: never a
trained adapter, a Trainer checkpoint or a folder of anything else, and never
a folder that is, holds or lies inside a source being read.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch

from ..io.atomic import (
    OUTPUT_MARKER,
    check_output,
    holds,
    mark_output,
    replace_folder,
    write_safetensors,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "check_replaceable_adapter",
    "lora_config",
    "write_lora_folder",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


def _most_common(values: Mapping[str, float]) -> float:
    """The value most modules share (the larger one on a tie)."""
    counts = Counter(values.values())
    return max(counts, key=lambda value: (counts[value], value))


def lora_config(
    ranks: Mapping[str, int],
    scales: Mapping[str, float],
    *,
    rslora: bool = False,
    base_model: str | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """A ``LoraConfig`` dict giving each module (full path) its rank and scale (module docstring).

    ``extra`` adds or overrides fields (e.g. ``task_type`` of the adapter resized).
    """
    alphas = {
        module: scales[module] * (math.sqrt(rank) if rslora else rank)
        for module, rank in ranks.items()
    }
    rank = int(_most_common(ranks))
    alpha = _most_common({m: round(a, 12) for m, a in alphas.items()})
    config: dict[str, object] = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "use_rslora": rslora,
        "target_modules": sorted(ranks),
        "rank_pattern": {m: int(r) for m, r in sorted(ranks.items()) if r != rank},
        "alpha_pattern": {m: a for m, a in sorted(alphas.items()) if round(a, 12) != alpha},
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    config.update(extra or {})
    return config


def check_replaceable_adapter(
    out: str | os.PathLike, force: bool, sources: tuple[str | os.PathLike, ...] = ()
) -> None:
    """Refuse ``out`` unless it is free, or an adapter folder spectra wrote and ``force``.

    ``sources`` (the checkpoints read) must lie apart from ``out``.
    """
    check_output(out, force, "adapter folder", holds(OUTPUT_MARKER), sources=sources)


def write_lora_folder(
    out: str | os.PathLike,
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    config: Mapping[str, object],
    *,
    dtype: torch.dtype = torch.float32,
    force: bool = False,
    sources: tuple[str | os.PathLike, ...] = (),
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
    extra_files: Mapping[str, str] | None = None,
    what: str = "LoRA adapter",
) -> Path:
    """Write ``{module: (B (d_out, r), A (r, d_in))}`` and ``config`` as a PEFT adapter folder.

    ``extra_tensors`` are stored as given (e.g. tensors copied unchanged);
    ``extra_files`` are text files written beside (a report of the errors);
    ``what`` goes into the output marker (which command wrote the folder).
    """
    out = Path(out)
    check_replaceable_adapter(out, force, sources)
    tensors: dict[str, torch.Tensor] = {}
    for module, (B, A) in factors.items():
        tensors[f"{_PREFIX}{module}.lora_A.weight"] = A.to(dtype).contiguous()  # (r, d_in)
        tensors[f"{_PREFIX}{module}.lora_B.weight"] = B.to(dtype).contiguous()  # (d_out, r)
    tensors.update(extra_tensors or {})
    with replace_folder(out) as staging:
        (staging / ADAPTER_CONFIG).write_text(json.dumps(dict(config), indent=2) + "\n")
        write_safetensors(staging / ADAPTER_WEIGHTS, tensors, metadata={"format": "pt"})
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        mark_output(staging, what)
    return out
