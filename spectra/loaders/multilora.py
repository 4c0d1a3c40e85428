"""MultiLoRA checkpoints: n parallel LoRAs with learnable scaling vectors.

ΔW = (α/r) · Σ_i diag(c_i) · B_i @ A_i (Wang et al., 2023, "MultiLoRA:
democratizing LoRA for better multi-task learning"), with ``A_i (r, d_in)``,
``B_i (d_out, r)`` and ``c_i (d_out,)``. It is kept factored as
``[diag(c_1)B_1 … diag(c_n)B_n] @ [A_1; …; A_n]`` (rank ≤ n·r); with
``per_head=True`` each ΔW_i = (α/r)·diag(c_i)·B_i@A_i is its own row.

Two layouts are read:

- the reference layout: a ``torch.save`` state dict (``*.pt``) with keys
  ``{module}.lora_A`` ``(n, r, d_in)``, ``{module}.lora_B`` ``(n, d_out, r)``
  and ``{module}.lora_scaling`` ``(n, d_out)``; the frozen base weights may sit
  alongside and are ignored. No config is saved: r and n come from the
  shapes and α from the user (``lora_alpha=`` / ``--lora-alpha``);
- spectra's own layout (``spectra convert``, ``analysis.convert.write_multilora``):
  a folder with ``adapter_config.json`` (``peft_type: "SPECTRA_MULTILORA"``,
  ``r``, ``lora_alpha``, ``num_heads``, ``format_version``) and
  ``adapter_model.safetensors`` holding the same stacked keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..arguments import LORA_ALPHA, PER_HEAD
from ..errors import FormatError
from .adapter import AdaptedModule, AdapterCheckpoint, Rows
from .methods import lora, multilora
from .naming.architectures import ModuleRef, canonical_name, map_with_reasons
from .registry import Format, register
from .storage.tensors import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    open_store,
    tensor_names,
)

__all__ = ["MULTILORA_TYPE", "MultiLoraCheckpoint", "is_multilora_file"]

MULTILORA_TYPE = "SPECTRA_MULTILORA"
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B|scaling)(?:\.weight)?$")


def is_multilora_file(names: Iterable[str]) -> bool:
    """Whether a state dict with these tensor names holds MultiLoRA's ``lora_scaling`` vectors."""
    return any(_KEY.match(name) and ".lora_scaling" in name for name in names)


@dataclass
class StackedModule(AdaptedModule):
    """One MultiLoRA module: ``parts`` are its stacked ``A`` (n, r, d_in), ``B`` (n, d_out, r)
    and ``scaling`` (n, d_out) tensors; ``heads`` is n, ``rank`` r, ``shape`` (d_out, d_in)."""

    @property
    def a(self) -> str:
        return self.parts["A"]

    @property
    def b(self) -> str:
        return self.parts["B"]

    @property
    def scaling(self) -> str:
        return self.parts["scaling"]

    @property
    def d_out(self) -> int:
        return self.shape[0]

    @property
    def d_in(self) -> int:
        return self.shape[1]


class MultiLoraCheckpoint(AdapterCheckpoint):
    """A MultiLoRA checkpoint in the reference ``.pt`` layout or spectra's own folder."""

    format = "multilora"

    def __init__(
        self,
        path: Path,
        base: Path | None,
        *,
        lora_alpha: float | None = None,
        per_head: bool = False,
    ):
        super().__init__(path, base)
        self.per_head = per_head
        self.config: dict = {}
        if path.is_dir():
            from .peft import ADAPTER_CONFIG, read_adapter_config

            self.config = read_adapter_config(path)
            self.config_path = path / ADAPTER_CONFIG
            weights = path / "adapter_model.safetensors"
            if not weights.is_file():
                raise FormatError(f"{path}: has {ADAPTER_CONFIG} but no adapter_model.safetensors")
            self.store = open_store(weights)
        else:
            self.store = open_store(path)
        self.alpha, self.alpha_source = self._alpha(lora_alpha)
        self.stacked = self._read_modules()
        self.modules, self.unmapped = map_with_reasons(self.stacked)
        if not self.modules:
            raise FormatError(
                f"{self.store.path}: no attention or MLP projection among the MultiLoRA modules "
                f"{', '.join(sorted(self.stacked)[:10])}; this architecture is not mapped yet"
            )
        self.open_base(base)

    def _alpha(self, lora_alpha: float | None) -> tuple[float | None, str]:
        if lora_alpha is not None:
            return float(lora_alpha), f"{LORA_ALPHA}"
        alpha = self.config.get("lora_alpha")
        if isinstance(alpha, int | float) and not isinstance(alpha, bool):
            return float(alpha), "config: lora_alpha"
        return None, "none"

    def _read_modules(self) -> dict[str, StackedModule]:
        parts: dict[str, dict[str, str]] = {}
        for name in self.store.names():
            match = _KEY.match(name)
            if match:
                parts.setdefault(canonical_name(match["module"]), {})[match["part"]] = name
        stacked = {}
        for module, names in parts.items():
            if set(names) != {"A", "B", "scaling"}:
                missing = sorted({"A", "B", "scaling"} - set(names))
                raise FormatError(
                    f"{self.store.path}: MultiLoRA module {module} lacks "
                    f"{', '.join('lora_' + m for m in missing)}; "
                    "expected lora_A, lora_B and lora_scaling"
                )
            a, b, c = (self.store.info(names[p]).shape for p in ("A", "B", "scaling"))
            ok = len(a) == 3 and len(b) == 3 and len(c) == 2
            if not ok or a[0] != b[0] or a[0] != c[0] or a[1] != b[2] or b[1] != c[1]:
                raise FormatError(
                    f"{self.store.path}: MultiLoRA module {module} should have lora_A "
                    f"(n, r, d_in), lora_B (n, d_out, r) and lora_scaling (n, d_out); "
                    f"found {a}, {b}, {c}"
                )
            parts = {part: names[part] for part in ("A", "B", "scaling")}
            stacked[module] = StackedModule(
                module, parts, rank=a[1], shape=(b[1], a[2]), heads=a[0]
            )
        return stacked

    @property
    def variant(self) -> str:
        return "MultiLoRA (" + ("per head" if self.per_head else "sum of heads") + ")"

    def scale(self, stacked: StackedModule) -> float:
        return 1.0 if self.alpha is None else lora.scale(stacked.rank, self.alpha)

    def scale_source(self, stacked: StackedModule) -> str:
        if self.alpha is None:
            return f"none: α unknown, ΔW = Σ diag(c_i) B_i A_i without α/r ({LORA_ALPHA})"
        return f"{self.alpha_source}/r = {self.alpha:g}/{stacked.rank}"

    def module_shape(self, ref: ModuleRef) -> tuple[int, int]:
        stacked = self.stacked[ref.module]
        return (stacked.d_out, stacked.d_in)

    def module_dtype(self, ref: ModuleRef) -> torch.dtype:
        return self.store.info(self.stacked[ref.module].a).dtype

    def updates(self, ref: ModuleRef, rows: Rows, base: torch.Tensor | None):
        stacked = self.stacked[ref.module]
        A = self.store.load(stacked.a)  # (n, r, d_in)
        B = self.store.load(stacked.b)  # (n, d_out, r)
        c = self.store.load(stacked.scaling)  # (n, d_out)
        s = self.scale(stacked)
        if self.per_head:
            return list(enumerate(multilora.each_head(A, B, c, s, rows)))
        return [(None, multilora.summed(A, B, c, s, rows))]

    def warnings(self) -> list[str]:
        notes = []
        if self.alpha is None:
            notes.append(
                "MultiLoRA saves no α: norms are those of Σ diag(c_i) B_i A_i without α/r; "
                f"balance metrics are scale-invariant and unaffected ({LORA_ALPHA} sets α)"
            )
        zero = [
            module
            for module, stacked in self.stacked.items()
            if not torch.any(self.store.load(stacked.scaling))
        ]
        if len(zero) == len(self.stacked):
            notes.append(
                "every lora_scaling vector is zero (an untrained MultiLoRA: scalings start at 0), "
                "so ΔW = 0 in every module"
            )
        elif zero:
            notes.append(f"{len(zero)} modules have all-zero lora_scaling, so ΔW = 0 there")
        return notes

    def not_analysed(self) -> list[tuple[str, str]]:
        """Tensors of no MultiLoRA module (frozen base weights) and modules the map lacks."""
        reasons: dict[str, str | None] = {}  # tensor → why not analysed; None: analysed
        for module, stacked in self.stacked.items():
            for name in (stacked.a, stacked.b, stacked.scaling):
                reasons[name] = self.unmapped.get(module)
        other = "not a MultiLoRA tensor (a frozen base weight?)"
        return [
            (name, reasons.get(name, other))
            for name in self.store.names()
            if reasons.get(name, other) is not None
        ]

    def factors(self, ref: ModuleRef) -> dict[str, object]:
        stacked = self.stacked[ref.module]
        return {
            "kind": "factored",
            "rank": stacked.rank,
            "scale": self.scale(stacked),
            "scale_source": self.scale_source(stacked),
            "heads": stacked.heads,
        }

    def details(self) -> dict[str, object]:
        return {
            "weights": str(self.store.path),
            "heads": sorted({s.heads for s in self.stacked.values()}),
            "r": sorted({s.rank for s in self.stacked.values()}),
            "lora_alpha": self.alpha,
            "other_tensors_ignored": len(self.store.names()) - 3 * len(self.stacked),
        }


def claims(path: Path) -> bool:
    """spectra's MultiLoRA folder (its ``peft_type``), or a state dict with ``lora_scaling``."""
    if path.is_dir():
        config = path / "adapter_config.json"
        if not config.is_file():
            return False
        try:
            return json.loads(config.read_text()).get("peft_type") == MULTILORA_TYPE
        except (OSError, ValueError, AttributeError):
            return False  # the PEFT reader says what is wrong with the config
    if path.suffix not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        return False
    return is_multilora_file(tensor_names(path))


def open_multilora(path: Path, base: Path | None, *, base_lookup=None, **options):
    """The MultiLoRA reader (no config names a base, so ``base_lookup`` is not used)."""
    return MultiLoraCheckpoint(path, base, **options)


FORMAT = register(
    Format(
        name="multilora",
        claims=claims,
        open=open_multilora,
        priority=30,  # before peft: its folder has an adapter_config.json too
        options=(LORA_ALPHA, PER_HEAD),
        recognised_by=(
            f"a folder whose adapter_config.json has peft_type {MULTILORA_TYPE}, or a "
            ".pt / .bin / .safetensors state dict with lora_A, lora_B and lora_scaling tensors"
        ),
    )
)
