"""``spectra convert``: write a MultiLoRA checkpoint in spectra's documented folder layout.

The reference implementation saves a bare ``torch.save`` state dict with no
config (docs/formats.md, "MultiLoRA"); this writes ``adapter_config.json`` (``peft_type``
``SPECTRA_MULTILORA``, ``r``, ``num_heads``, ``lora_alpha``, the formula) and
``adapter_model.safetensors`` with the stacked tensors, so that other
MultiLoRA code can convert once. Writing lives here, outside the loaders.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import FormatError
from ..io.atomic import (
    OUTPUT_MARKER,
    check_output,
    holds,
    mark_output,
    replace_folder,
    write_safetensors,
)
from ..io.hub import locate
from ..loaders import detect_format
from ..loaders.multilora import MULTILORA_TYPE, MultiLoraCheckpoint
from .sources import load

__all__ = ["convert", "write_multilora"]


def write_multilora(
    checkpoint: MultiLoraCheckpoint, destination: str | Path, force: bool = False
) -> Path:
    """Write a MultiLoRA checkpoint in spectra's own folder layout (atomically).

    An existing ``destination`` is replaced only if spectra wrote it (its
    ``OUTPUT_MARKER``) and ``force`` is given, and never when it is, holds or
    lies inside the checkpoint read.
    """
    out = Path(destination)
    check_output(
        out, force, "MultiLoRA folder", holds(OUTPUT_MARKER), flag="DST", sources=(checkpoint.path,)
    )
    ranks = {s.rank for s in checkpoint.stacked.values()}
    heads = {s.heads for s in checkpoint.stacked.values()}
    if len(ranks) != 1 or len(heads) != 1:
        raise FormatError(
            f"{checkpoint.store.path}: modules differ in r {sorted(ranks)} or n {sorted(heads)}; "
            "spectra's MultiLoRA layout holds one r and one n"
        )
    tensors = {}
    for stacked in checkpoint.stacked.values():
        for part, name in (
            ("lora_A", stacked.a),
            ("lora_B", stacked.b),
            ("lora_scaling", stacked.scaling),
        ):
            tensors[f"{stacked.module}.{part}"] = checkpoint.store.load(name).contiguous()
    config = {
        "peft_type": MULTILORA_TYPE,
        "format_version": 1,
        "r": ranks.pop(),
        "num_heads": heads.pop(),
        "lora_alpha": checkpoint.alpha,
        "source": str(checkpoint.path),
        "formula": "ΔW = (lora_alpha / r) · Σ_i diag(lora_scaling[i]) · lora_B[i] @ lora_A[i]",
    }
    with replace_folder(out) as staging:
        write_safetensors(staging / "adapter_model.safetensors", tensors, {"format": "pt"})
        (staging / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        mark_output(staging, "MultiLoRA folder (spectra convert)")
    return out


def convert(
    source: str | Path,
    destination: str | Path,
    lora_alpha: float | None = None,
    force: bool = False,
) -> MultiLoraCheckpoint:
    """``spectra convert``: read a MultiLoRA checkpoint and write it in spectra's layout.

    Returns the checkpoint read (its ``stacked`` modules and ``warnings()``). A
    source of another format is refused with what it is: spectra analyses
    those as they are.
    """
    found = detect_format(locate(source, "SRC").path)
    if found != "multilora":
        raise FormatError(
            f"{source}: spectra convert reads MultiLoRA checkpoints (a state dict with "
            f"lora_A, lora_B and lora_scaling tensors); this is a {found} checkpoint, which "
            "spectra analyze reads as it is: nothing to convert"
        )
    checkpoint = load(source, lora_alpha=lora_alpha)
    write_multilora(checkpoint, destination, force=force)
    return checkpoint
