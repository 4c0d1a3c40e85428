"""What the single-file LoRA formats beyond PEFT share (MLX-LM, torchtune, GGUF).

Each of those formats stores, per adapted module, a down factor ``A`` and an
up factor ``B`` (and, for DoRA, a magnitude vector ``m``) under names of its
own, with the scale somewhere of its own (an absolute ``scale`` in MLX-LM's
config, ``lora_alpha / r`` in torchtune's, ``adapter.lora.alpha / r`` in a
GGUF header). A format module reads its names and config into ``LowRankModule``
records; ``LoraFileCheckpoint`` does the rest:

- ΔW = ``scale · B @ A`` in float64, kept factored (``Factored``), with
  ``B (d_out, r)`` and ``A (r, d_in)`` whatever the file's orientation
  (``transposed``: MLX-LM stores ``lora_a (d_in, r)`` and ``lora_b (r, d_out)``);
- DoRA: ``diag(m / ‖V‖_row) · V − W0`` with ``V = W0 + scale · B @ A``
  (``Dense``; needs the base), or ``s · B @ A`` alone with ``directional_only``
  (both formulas in ``methods/``: ``lora.factored``, ``dora.delta``);
- rows stored in the interleaved RoPE order (torchtune's native q/k, and
  llama.cpp's for LLaMA-family q/k, both from Meta's layout) are put back in
  Hugging Face's order (``to_hf_rows``) with the head counts of the base
  model's ``config.json`` (or a ``config.json`` / ``params.json`` beside the
  adapter), so that singular vectors, ``relative_norm`` and DoRA line up with
  a Hugging Face base. A row permutation changes no singular value: without
  head counts such a module is analysed in its stored order, with a warning,
  and refused only where it must meet a base;
- a module that fuses several roles (GGUF phi3's ``ffn_up``, which is
  ``gate_up_proj``) holds one ref per role (``LowRankModule.fused_refs``), each
  of which reads its own rows of ΔW, and of W0 for DoRA (``adapter.py``);
- every tensor of the file is part of an analysed ΔW or listed by
  ``not_analysed()`` with its reason (``left_out``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ...arguments import BASE, DIRECTIONAL_ONLY, SUBSPACE
from ...errors import FormatError, MissingBaseError
from ..adapter import AdaptedModule, AdapterCheckpoint, Rows, Update
from ..base import Selection
from ..methods import dora, lora
from ..naming.architectures import ModuleRef

__all__ = [
    "HeadCounts",
    "LoraFileCheckpoint",
    "LowRankModule",
    "TensorSource",
    "read_head_counts",
    "to_hf_rows",
]



class TensorSource(Protocol):
    """What a format's tensor file offers (``tensors.TensorStore``, or GGUF's reader)."""

    path: Path

    def names(self) -> list[str]: ...

    def load(self, name: str) -> torch.Tensor: ...

    def files(self) -> list[Path]: ...


@dataclass(frozen=True)
class HeadCounts:
    """Attention heads of the base model: what un-permuting q and k rows needs."""

    heads: int
    kv_heads: int
    head_dim: int
    source: Path  # the config file they came from

    def of(self, role: str) -> int:
        return self.heads if role == "q" else self.kv_heads


def read_head_counts(folder: Path | None) -> HeadCounts | None:
    """Head counts from ``config.json`` (Hugging Face) or ``params.json`` (Meta) in ``folder``."""
    if folder is None:
        return None
    folder = folder if folder.is_dir() else folder.parent
    for name, keys in (
        ("config.json", ("num_attention_heads", "num_key_value_heads", "hidden_size")),
        ("params.json", ("n_heads", "n_kv_heads", "dim")),
    ):
        try:
            config = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(config, dict):
            continue
        config = config.get("text_config", config) if "text_config" in config else config
        heads, kv_heads, hidden = (config.get(key) for key in keys)
        if not isinstance(heads, int) or heads <= 0:
            continue
        kv_heads = kv_heads if isinstance(kv_heads, int) and kv_heads > 0 else heads
        head_dim = config.get("head_dim")
        if not isinstance(head_dim, int):
            head_dim = hidden // heads if isinstance(hidden, int) else 0
        if head_dim > 0:
            return HeadCounts(heads, kv_heads, head_dim, folder / name)
    return None


def to_hf_rows(matrix: torch.Tensor, heads: int, head_dim: int, name: str) -> torch.Tensor:
    """Rows in the interleaved RoPE order (per head: pairs) put back in Hugging Face's order.

    Meta's layout, which torchtune keeps and llama.cpp's converter restores,
    holds each head's rotary pairs side by side; Hugging Face holds the two
    halves of each head one after the other. transformers' LLaMA converter
    goes from Meta to HF by viewing the rows as ``(heads, head_dim/2, 2)``
    and swapping the last two axes; so does torchtune's ``tune_to_hf``.
    ``matrix`` is ``(heads·head_dim, …)``; the result has the same shape.
    """
    rows = matrix.shape[0]
    if rows != heads * head_dim or head_dim % 2:
        raise FormatError(
            f"{name}: expected {heads} heads × {head_dim} rows = {heads * head_dim} output rows "
            f"(from the base model's config.json) to restore Hugging Face's row order; found "
            f"{rows}: is {BASE} the model this adapter was trained on?"
        )
    rest = matrix.shape[1:]
    return matrix.reshape(heads, head_dim // 2, 2, *rest).transpose(1, 2).reshape(rows, *rest)


@dataclass
class LowRankModule(AdaptedModule):
    """One adapted module of a low-rank file, and its row order.

    ``module`` is its path and ``parts`` its ``a`` (down) and ``b`` (up)
    factors and, for DoRA, its ``magnitude`` m (d_out,); ``of`` builds one.
    """

    ref: ModuleRef | None = None  # its (layer, role); the first role's for a fused module
    transposed: bool = False  # a stored (d_in, r) and b (r, d_out), as MLX-LM does
    interleaved: bool = False  # q/k rows stored in the interleaved RoPE order
    fused_refs: tuple[ModuleRef, ...] = ()  # one per role of a fused module (ref is the first)

    @classmethod
    def of(
        cls, ref: ModuleRef, a: str, b: str, magnitude: str | None = None, **fields: object
    ) -> LowRankModule:
        """The module ``ref`` names, with its factors' (and magnitude's) tensor names."""
        parts = {"a": a, "b": b} | ({"magnitude": magnitude} if magnitude else {})
        return cls(ref.module, parts, ref=ref, **fields)

    @property
    def a(self) -> str:
        """The down factor's tensor name."""
        return self.parts["a"]

    @property
    def b(self) -> str:
        """The up factor's tensor name."""
        return self.parts["b"]

    @property
    def magnitude(self) -> str | None:
        """DoRA's magnitude vector's tensor name, if the module has one."""
        return self.parts.get("magnitude")

    @property
    def refs(self) -> tuple[ModuleRef, ...]:
        """The (layer, role) refs this module's ΔW is read as: one, or one per fused role."""
        return self.fused_refs or (self.ref,)

    def tensors(self) -> list[str]:
        return [self.a, self.b, *([self.magnitude] if self.magnitude else [])]


class LoraFileCheckpoint(AdapterCheckpoint):
    """A LoRA / DoRA file of a format of its own; subclasses fill ``lora`` and ``left_out``.

    Subclasses set ``format``, ``store`` (a ``TensorSource``), ``lora``
    (module name → ``LowRankModule``), ``left_out`` (``(tensor, reason)``) and
    ``order_note`` (what stored the interleaved rows), then call ``finish``.
    """

    method = "LoRA"
    order_note = ""
    base_hint = ""  # where the base could be named, for DoRA's error

    def finish(
        self, base: Path | None, *, directional_only: bool = False, heads_from: Path | None = None
    ) -> None:
        """Map the modules, open the base, and find head counts (base first, then beside)."""
        self.directional_only = directional_only
        self.modules = {(r.layer, r.role): r for m in self.lora.values() for r in m.refs}
        if not self.modules:
            listing = ", ".join(name for name, _ in self.left_out[:6]) or "none"
            raise FormatError(
                f"{self.store.path}: no attention or MLP projection is adapted; tensors: "
                f"{listing}{' …' if len(self.left_out) > 6 else ''}"
            )
        self.open_base(base)
        self.head_counts = read_head_counts(base) or read_head_counts(heads_from)

    def source_files(self) -> list[Path]:
        """The adapter's files and the base's, and the config the head counts came from."""
        files = super().source_files()
        counts = self.head_counts
        return files + ([counts.source] if counts and counts.source not in files else [])

    # -- what a subclass may use -------------------------------------------

    @property
    def dora(self) -> bool:
        return any(m.magnitude for m in self.lora.values())

    def module_of(self, ref: ModuleRef) -> LowRankModule:
        return self.lora[ref.module]

    def interleaved(self, keys: Iterable[tuple[int, str]]) -> list[LowRankModule]:
        """The selected modules stored in the interleaved order."""
        chosen = [self.module_of(self.modules[key]) for key in keys]
        return [module for module in chosen if module.interleaved]

    # -- AdapterCheckpoint ---------------------------------------------------

    @property
    def variant(self) -> str:
        if self.dora:
            part = ", directional part only" if self.directional_only else ""
            return f"DoRA ({self.method}{part})"
        return self.method

    def module_shape(self, ref: ModuleRef) -> tuple[int, int]:
        return self.module_of(ref).shape

    def module_dtype(self, ref: ModuleRef) -> torch.dtype:
        return self.store.info(self.module_of(ref).a).dtype

    def factors(self, ref: ModuleRef) -> dict[str, object]:
        module = self.module_of(ref)
        dense = module.magnitude is not None and not self.directional_only
        return {
            "kind": "dense" if dense else "factored",
            "rank": module.rank,
            "scale": module.scale,
            "scale_source": module.scale_source,
            "heads": None,
        }

    def check(self, selection: Selection) -> None:
        if self.dora and not self.directional_only and self.base_weights is None:
            raise MissingBaseError(
                f"{self.store.path}: DoRA's ΔW = diag(m/‖W0 + s·B@A‖_row)(W0 + s·B@A) − W0 needs "
                f"the base weight W0{self.base_hint}: pass {BASE('DIR')} "
                f"(or {DIRECTIONAL_ONLY} for s·B@A alone)"
            )
        if self.base_weights is not None and self.head_counts is None:
            stored = self.interleaved(selection.keys)
            if stored:
                raise MissingBaseError(
                    f"{self.store.path}: {stored[0].ref.module} keeps its rows in the interleaved "
                    f"RoPE order ({self.order_note}), and the base's rows are in Hugging Face's: "
                    f"expected num_attention_heads in {self.base_weights.path}/config.json to put "
                    f"them in the same order, found none; pass a {BASE} with its config.json"
                )
        super().check(selection)

    def warnings(self) -> list[str]:
        notes = []
        stored = [m for m in self.lora.values() if m.interleaved]
        if stored and self.head_counts is None:
            notes.append(
                f"{len(stored)} q/k modules keep their rows in the interleaved RoPE order "
                f"({self.order_note}) and no config.json gives the head counts to restore Hugging "
                "Face's order: singular values, norms and every metric are unchanged by a row "
                "permutation, but their singular vectors are not comparable with a Hugging Face "
                f"model's (compare {SUBSPACE}); pass {BASE('DIR')}, whose config.json fixes that"
            )
        elif stored:
            notes.append(
                f"{len(stored)} q/k modules stored in the interleaved RoPE order "
                f"({self.order_note}) are put in Hugging Face's row order with the head counts "
                f"of {self.head_counts.source}"
            )
        if self.dora and self.directional_only:
            notes.append(
                f"DoRA analysed as its directional part s·B@A only ({DIRECTIONAL_ONLY}): the "
                "magnitude vector is ignored, so this is not the update DoRA applies"
            )
        return notes

    def not_analysed(self) -> list[tuple[str, str]]:
        left_out = list(self.left_out)
        if self.directional_only:
            magnitudes = [m.magnitude for m in self.lora.values() if m.magnitude]
            ignored = f"DoRA's magnitude vector, ignored with {DIRECTIONAL_ONLY}"
            left_out += [(name, ignored) for name in magnitudes]
        return left_out

    def _factors(self, module: LowRankModule) -> tuple[torch.Tensor, torch.Tensor]:
        """``B (d_out, r)`` and ``A (r, d_in)`` in float64, rows in Hugging Face's order."""
        A = self.store.load(module.a).double()
        B = self.store.load(module.b).double()
        if module.transposed:
            A, B = A.T, B.T  # (d_in, r) → (r, d_in); (r, d_out) → (d_out, r)
        return self._hf_rows(module, B), A

    def _hf_rows(self, module: LowRankModule, rows: torch.Tensor) -> torch.Tensor:
        if not module.interleaved or self.head_counts is None:
            return rows
        counts = self.head_counts
        return to_hf_rows(rows, counts.of(module.ref.role), counts.head_dim, module.ref.module)

    def updates(
        self, ref: ModuleRef, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        module = self.module_of(ref)
        B, A = self._factors(module)  # (d_out, r), (r, d_in)
        if module.magnitude is None or self.directional_only:
            return [(None, lora.factored(B, A, module.scale, rows))]
        magnitude = self.store.load(module.magnitude).reshape(-1, 1)  # (d_out, 1)
        magnitude = self._hf_rows(module, magnitude)
        return [(None, dora.delta(base, B, A, module.scale, magnitude, rows))]
