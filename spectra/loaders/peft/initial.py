"""The initial adapter of a LoRA whose initialisation moved W₀ (PiSSA, OLoRA, CorDA, LoftQ, …).

These methods start from ``B₀ ≠ 0`` and subtract ``s·B₀@A₀`` from the base
weight when the adapter is created (``W_res = W − s·B₀@A₀``), so the trained
adapter's ``s·B@A`` is not the update of the original model. With the
adapter as it was saved before training (``initial=DIR``, ``--initial DIR``;
the folder peft's ``save_pretrained(path_initial_model_for_weight_conversion=…)``
reads), the update of the original weights is

    ΔW = W_res + s·B@A − W = s·(B@A − B₀@A₀) = s · [B, −B₀] @ [A; A₀],

one factored update of rank ≤ 2r — what peft's conversion saves as a plain
LoRA of rank 2r. The initial adapter must be a LoRA of the same modules,
shapes and scale; anything else is refused, naming both folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ...arguments import INITIAL
from ...errors import FormatError

if TYPE_CHECKING:
    from .checkpoint import PeftCheckpoint

__all__ = ["InitialAdapter"]


class InitialAdapter:
    """``B₀`` and ``A₀`` of each module of a LoRA adapter, from its saved initial state."""

    def __init__(self, tuned: PeftCheckpoint, path: Path):
        from .checkpoint import PeftCheckpoint  # the same reader, for the initial folder

        self.path = path
        if not path.is_dir():
            raise FormatError(
                f"{path}: no such folder; expected the adapter folder saved before training "
                f"(adapter_config.json + adapter_model.*) ({INITIAL})"
            )
        plain = tuned.peft_type == "LORA" and not tuned.config.get("lora_nums")
        if not plain or tuned.config.get("use_dora"):
            raise FormatError(
                f"{tuned.config_path}: {INITIAL} applies to LoRA and rsLoRA adapters (ΔW = "
                f"s·(B@A − B₀@A₀)); this adapter is {tuned.variant}: drop {INITIAL}"
            )
        self.adapter = PeftCheckpoint(path, None, adapter=tuned.adapter_name)
        initial = self.adapter
        if initial.peft_type != "LORA" or initial.config.get("use_dora"):
            raise FormatError(
                f"{initial.config_path}: expected the initial state of a LoRA adapter, found "
                f"{initial.variant} ({INITIAL})"
            )
        for module in sorted(tuned.mapped):
            self._check(tuned, module)

    def _check(self, tuned: PeftCheckpoint, module: str) -> None:
        initial = self.adapter
        found = initial.adapted.get(module)
        if found is None or module not in initial.mapped:
            raise FormatError(
                f"{initial.store.path}: expected the initial lora_A and lora_B of {module}, which "
                f"{tuned.store.path} adapts; found none. Is {INITIAL} the adapter saved before "
                "training this one?"
            )
        mine = tuned.adapted[module]
        shapes = [tuned.shape_of(mine, part) for part in ("lora_A", "lora_B")]
        initial_shapes = [initial.shape_of(found, part) for part in ("lora_A", "lora_B")]
        if shapes != initial_shapes or abs(found.scale - mine.scale) > 1e-12 * abs(mine.scale):
            raise FormatError(
                f"{initial.store.path}: {module} should have lora_A {shapes[0]} and lora_B "
                f"{shapes[1]} with scale {mine.scale:g} as in {tuned.store.path}; found "
                f"{initial_shapes[0]} and {initial_shapes[1]} with scale {found.scale:g} "
                f"({found.scale_source}). Is {INITIAL} the adapter saved before training this one?"
            )

    def factors(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B₀, A₀)`` of a module: ``(d_out, r)`` and ``(r, d_in)``, as stored."""
        B0, A0 = self.adapter.need(self.adapter.adapted[module], "lora_B", "lora_A")
        return B0, A0

    def files(self) -> list[Path]:
        return [self.adapter.config_path, *self.adapter.store.files()]
