"""PEFT adapters: ``adapter_config.json`` + ``adapter_model.safetensors`` (or ``.bin``).

Each ``peft_type`` has a variant that knows its tensors and rebuilds ΔW as
the method defines it (``docs/formats.md``, checked against peft's own merge):

| variant | ΔW | module |
|---|---|---|
| LoRA / rsLoRA | ``s · B @ A``, ``s = α/r`` or ``α/√r`` (factored) | ``lora`` |
| DoRA | ``diag(m / ‖V‖_row) · V − W0``, ``V = W0 + s·B@A`` (dense; needs W0) | ``lora`` |
| multi-head (HydraLoRA) | per head ``s·B_j @ A``; mixture ``s·mean_j(B_j) @ A`` | ``multihead`` |
| AdaLoRA | ``B @ (A ⊙ E) · α / (init_r + 1e-5)``, α ≤ 0: the kept rank (factored) | ``adalora`` |
| LoHa | ``(w1a @ w1b) ⊙ (w2a @ w2b) · α/r`` (dense) | ``lycoris`` |
| LoKr | ``kron(w1, w2) · α/r``, each factor whole or ``_a @ _b`` (dense) | ``lycoris`` |
| VeRA | ``diag(λ_b) B diag(λ_d) A``, shared ``A`` sliced to d_in (from W0) | ``vera`` |

``checkpoint`` reads the folder (config, weights, tensor names, adapter
selection, base lookup, ``not_analysed()``) and hands each module to its
variant; ``variant`` holds what the variants share. ``fan_in_fan_out``
changes only how PEFT adds ΔW to a Conv1D weight: ``B @ A`` is already
``(d_out, d_in)``. A fused projection keeps its form per role by selecting
rows of B (or of dense ΔW). Every product and sum of adapter tensors is taken
in float64, whatever the dtype they were saved in.
"""

from pathlib import Path

from ...arguments import ADAPTER, DIRECTIONAL_ONLY, INITIAL, PER_HEAD
from ..registry import Format, register
from .checkpoint import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    PEFT_TYPES,
    BaseLookup,
    PeftCheckpoint,
    adapter_folder,
    read_adapter_config,
    sub_adapters,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FILES",
    "PEFT_TYPES",
    "BaseLookup",
    "PeftCheckpoint",
    "adapter_folder",
    "read_adapter_config",
    "sub_adapters",
]


def claims(path: Path) -> bool:
    """An adapter folder (its config, or adapters in sub-folders), or its weights file."""
    if path.is_dir():
        return (path / ADAPTER_CONFIG).is_file() or bool(sub_adapters(path))
    return path.name in ADAPTER_FILES and (path.parent / ADAPTER_CONFIG).is_file()


def open_peft(path: Path, base: Path | None, **options) -> PeftCheckpoint:
    """The PEFT reader; ``adapter_model.*`` is read as the folder it lies in."""
    return PeftCheckpoint(path.parent if path.is_file() else path, base, **options)


FORMAT = register(
    Format(
        name="peft",
        claims=claims,
        open=open_peft,
        priority=20,  # after every format that shares adapter_config.json (MLX-LM, MultiLoRA)
        options=(ADAPTER, PER_HEAD, DIRECTIONAL_ONLY, INITIAL),
        recognised_by=(
            f"a folder with {ADAPTER_CONFIG} (or adapters in sub-folders, each with one), or "
            f"the {' / '.join(ADAPTER_FILES)} inside it"
        ),
    )
)
