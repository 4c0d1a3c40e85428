"""What checkpoints that store ΔW's factors (PEFT adapters, MultiLoRA) share.

An ``AdapterCheckpoint`` maps (layer, role) to the adapted module, knows each
module's whole shape, and rebuilds the module's update(s); this class adds the
optional base model (for ``relative_norm``, DoRA, and the head count of
interleaved projections), checks the base against the adapter, selects the
rows of a fused projection, and yields the ``LayerDelta``s.

The base and the adapter need not fuse the same projections: a torchtune or
GGUF adapter keeps Phi-3's q, k, v (gate, up) apart where the Hugging Face base
fuses them in ``qkv_proj`` (``gate_up_proj``), and the reverse can happen. Each
role's W0 is then taken from its own rows of the base (``naming.architectures.ModuleRef.rows``,
the split the full fine-tune loader uses), and the base handed to ``updates``
is laid out as the adapted module is (``aligned_base``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..arguments import BASE
from ..delta import Dense, Factored, LayerDelta
from ..errors import BaseMismatchError, MissingBaseError, SpectraError
from .base import Checkpoint, ModuleInfo, Selection
from .methods import Rows, lora
from .naming.architectures import ModuleRef
from .storage.model import ModelWeights
from .storage.tensors import TensorStore

__all__ = ["AdaptedModule", "AdapterCheckpoint", "Rows", "Update"]

Update = Dense | Factored


@dataclass
class AdaptedModule:
    """One adapted module of an adapter, whatever its format: the one record every family uses.

    ``module`` is its path (or key prefix) in the file and ``parts`` its
    tensors by part (``lora_A`` → the tensor's name in the file); once the
    reader has checked them against its config, ``rank``, ``scale`` with
    where it came from, ``shape`` (d_out, d_in) of its ΔW and ``heads`` (a
    multi-head module's). A family whose files say more adds those fields in
    a subclass (the low-rank files' row order, an image model's conv kernel).
    """

    module: str
    parts: dict[str, str] = field(default_factory=dict)
    rank: int | None = None
    scale: float = 1.0
    scale_source: str = ""
    shape: tuple[int, int] | None = None
    heads: int | None = None

    def scale_by(
        self, rank: int, alpha: float, rank_source: str, alpha_source: str, root: bool = False
    ) -> None:
        """Set rank and the scale α/r (α/√r with ``root``), saying where each came from."""
        self.rank = rank
        self.scale = lora.scale(rank, alpha, root)
        source = lora.scale_text(rank, alpha, rank_source, alpha_source, root)
        self.scale_source = f"config: {source}"


class AdapterCheckpoint(Checkpoint):
    """A checkpoint of adapted modules; subclasses fill ``modules`` and rebuild updates."""

    modules: dict[tuple[int, str], ModuleRef]
    store: TensorStore  # the adapter's tensors
    config_path: Path | None = None  # its config file, when it has one
    base_weights: ModelWeights | None = None

    def open_base(self, base: Path | None) -> None:
        self.base = base
        self.base_weights = ModelWeights(base, BASE) if base is not None else None

    @abstractmethod
    def module_shape(self, ref: ModuleRef) -> tuple[int, int]:
        """(d_out, d_in) of the whole adapted module (all roles of a fused one)."""

    @abstractmethod
    def module_dtype(self, ref: ModuleRef) -> torch.dtype:
        """The dtype the module's adapter tensors were saved in."""

    @abstractmethod
    def factors(self, ref: ModuleRef) -> dict[str, object]:
        """``kind``, ``rank``, ``scale``, ``scale_source`` and ``heads`` of a module."""

    @abstractmethod
    def updates(
        self, ref: ModuleRef, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        """The (head, update) pairs of one role; ``base`` is the whole module weight or None."""

    def available(self):
        return self.modules.keys()

    def base_weight(self, key: tuple[int, str]) -> torch.Tensor | None:
        if self.base_weights is None or self.modules[key].experts:
            return None  # experts: one W0 each
        return self.base_weights.weight(self.base_weights.modules[key])  # (d_out, d_in) float64

    def same_layout(self, ref: ModuleRef, base_ref: ModuleRef) -> bool:
        """Whether the adapted module and the base's module hold the same rows in one order."""
        assert self.base_weights is not None
        return ref.fused == base_ref.fused and self.module_shape(
            ref
        ) == self.base_weights.module_shape(base_ref)

    def fused_roles(self, ref: ModuleRef) -> list[ModuleRef]:
        """The refs of every role the adapted module of ``ref`` holds (``ref`` unless fused)."""
        if ref.fused is None:
            return [ref]
        return [other for other in self.modules.values() if other.module == ref.module]

    def aligned_base(self, ref: ModuleRef, base_ref: ModuleRef) -> torch.Tensor:
        """W0 laid out as the adapted module: ``(d_out, d_in)`` float64, its rows in its order.

        With one layout on both sides this is the base module itself; otherwise
        each role of the adapted module gets that role's rows of the base.
        """
        assert self.base_weights is not None
        if self.same_layout(ref, base_ref):
            return self.base_weights.module_weight(base_ref)  # (d_out, d_in) float64
        aligned = torch.empty(self.module_shape(ref), dtype=torch.float64)  # (d_out, d_in)
        for role_ref in self.fused_roles(ref):
            base_role = self._base_ref(role_ref)
            aligned[self.rows(role_ref)] = self.base_weights.weight(base_role)  # (rows, d_in)
        return aligned

    def _base_ref(self, ref: ModuleRef) -> ModuleRef:
        """The base's ref of the role of ``ref`` (which is no expert), or BaseMismatchError."""
        assert self.base_weights is not None
        base_ref = self.base_weights.modules.get((ref.layer, ref.role))
        if base_ref is None or base_ref.experts:
            raise BaseMismatchError(
                f"{self.base_weights.store.path}: expected a layer {ref.layer} {ref.role!r} "
                f"weight, the {ref.role} rows of {ref.module} in the adapter, found "
                f"{'experts' if base_ref is not None else 'nothing'}; is {BASE} the model this "
                "adapter was trained on?"
            )
        return base_ref

    def source_files(self) -> list[Path]:
        config = [self.config_path] if self.config_path is not None else []
        own = [*config, *self.store.files()]
        return own + (self.base_weights.files() if self.base_weights is not None else [])

    def heads(self) -> int | None:
        return self.base_weights.heads if self.base_weights is not None else None

    def rows(self, ref: ModuleRef) -> Rows:
        """The output rows of ``ref``'s role in its module (all rows unless fused)."""
        if ref.needs_heads and self.heads() is None:
            raise MissingBaseError(
                f"{self.path}: {ref.module} interleaves q, k and v per attention head; the head "
                f"count comes from the base model's config.json: pass {BASE}"
            )
        return ref.rows(*self.module_shape(ref), self.heads())

    def shape_before_base(self, ref: ModuleRef) -> tuple[int, int | None]:
        """What ``describe()`` shows when the role's shape needs the base: the whole module's."""
        return self.module_shape(ref)

    def role_shape(self, ref: ModuleRef) -> tuple[int, int]:
        """(d_out, d_in) of ΔW for this role."""
        d_out, d_in = self.module_shape(ref)
        return (len(torch.arange(d_out)[self.rows(ref)]), d_in)

    def module_info(self, key: tuple[int, str]) -> ModuleInfo:
        group = self.modules[key]
        ref = group.members[0]  # experts of a mixture-of-experts role share one shape (check())
        try:
            shape = self.role_shape(ref)
        except SpectraError:  # an interleaved projection, VeRA's d_in: before --base is known
            shape = self.shape_before_base(ref)
        return ModuleInfo(
            layer=ref.layer,
            role=ref.role,
            name=group.module,
            shape=shape,
            dtype=str(self.module_dtype(ref)).removeprefix("torch."),
            **self.factors(ref),
            **({"experts": len(group.experts)} if group.experts else {}),
        )

    def check(self, selection: Selection) -> None:
        for key in selection.keys:
            for ref, base_ref in self._pairs(key):  # one pair, or one per expert
                self._check_pair(key, ref, base_ref)

    def _pairs(self, key: tuple[int, str]):
        """(adapter, base) refs of a (layer, role): one pair, or one per expert."""
        group = None if self.base_weights is None else self.base_weights.modules.get(key)
        base = {} if group is None else {member.expert: member for member in group.members}
        for ref in self.modules[key].members:
            yield ref, base.get(ref.expert)

    def _check_pair(self, key: tuple[int, str], ref: ModuleRef, base_ref: ModuleRef | None) -> None:
        self._check_shape(key, ref, base_ref)
        if self.base_weights is None or ref.fused is None or self.same_layout(ref, base_ref):
            return
        for role_ref in self.fused_roles(ref):  # the base rows aligned_base gathers
            if role_ref is not ref:
                key = (role_ref.layer, role_ref.role)
                self._check_shape(key, role_ref, self._base_ref(role_ref))

    def _check_shape(
        self, key: tuple[int, str], ref: ModuleRef, base_ref: ModuleRef | None
    ) -> None:
        shape = self.role_shape(ref)
        if self.base_weights is None:
            return
        found = None if base_ref is None else self.base_weights.shape(base_ref)
        if found != shape:
            expert = "" if ref.expert is None else f" (expert {ref.expert})"
            raise BaseMismatchError(
                f"{self.base_weights.store.path}: expected a layer {key[0]} {key[1]!r}{expert} "
                f"weight of shape {shape} to match the adapter, found {found or 'nothing'}; is "
                f"{BASE} the model this adapter was trained on?"
            )

    def _delta(self, key: tuple[int, str]) -> Iterator[LayerDelta]:
        for ref, base_ref in self._pairs(key):  # one module, or one per expert
            yield from self._member_deltas(ref, base_ref)

    def module_base(self, ref: ModuleRef, base_ref: ModuleRef | None) -> torch.Tensor | None:
        """W0 of the whole adapted module, laid out as it is (``aligned_base``), or None."""
        return None if self.base_weights is None else self.aligned_base(ref, base_ref)

    def _member_deltas(self, ref: ModuleRef, base_ref: ModuleRef | None) -> Iterator[LayerDelta]:
        rows = self.rows(ref)
        base_module = self.module_base(ref, base_ref)  # (d_out, d_in), the adapter's rows
        base_norm = None
        if base_module is not None:
            base_norm = float(torch.linalg.vector_norm(base_module[rows]))  # this role's W0
        for head, update in self.updates(ref, rows, base_module):
            yield LayerDelta(
                layer=ref.layer,
                role=ref.role,
                name=ref.module,
                update=update,
                source_dtype=self.module_dtype(ref),
                head=head,
                base_norm=base_norm,
                expert=ref.expert,
            )
