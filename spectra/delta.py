"""The update of one module, as loaders produce it and the SVD engine reads it.

A ``LayerDelta`` is ΔW for one (layer, role[, head]) of a checkpoint, in the
``nn.Linear`` orientation ``(d_out, d_in)``. Its ``update`` is either

- ``Factored(B, A, scale)``: ΔW = scale · B @ A, kept factored so that the
  singular values come from an r×r problem and ΔW is never materialised, or
- ``Dense(matrix[, rank_bound])``: ΔW itself (full fine-tunes, DoRA, LoHa, LoKr).

Loaders know nothing of SVD and the SVD engine knows nothing of file formats;
this module is the contract between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Dense", "Factored", "LayerDelta", "spectrum_key"]


@dataclass(frozen=True)
class Dense:
    """ΔW held as a matrix ``(d_out, d_in)``.

    ``rank_bound`` is the most rank the method that built it can reach, when
    that is less than ``min(d_out, d_in)``: LoHa's r₁·r₂, LoKr's product of
    its Kronecker factors' ranks. ``None`` for any other dense update (a full
    fine-tune, DoRA): its ceiling is ``min(d_out, d_in)`` (``rank_ceiling``).

    Args:
        matrix: ΔW itself, ``(d_out, d_in)`` in the ``nn.Linear`` orientation,
            any float dtype (the SVD engine takes it in float64).
        rank_bound: the most rank the method can reach, when less than
            ``min(d_out, d_in)``; ``None`` (the default): no bound but the shape.

    Example:
        >>> import torch
        >>> update = Dense(torch.eye(3))
        >>> update, update.shape, update.rank_ceiling
        (Dense(3×3, float32), (3, 3), 3)
        >>> Dense(torch.eye(3), rank_bound=2).rank_ceiling
        2
    """

    matrix: torch.Tensor  # (d_out, d_in)
    rank_bound: int | None = None

    @property
    def rank_ceiling(self) -> int:
        """The most rank this ΔW can have: ``rank_bound`` capped by ``min(d_out, d_in)``."""
        full = min(self.matrix.shape)
        return full if self.rank_bound is None else min(self.rank_bound, full)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)

    def to_dense(self) -> torch.Tensor:
        return self.matrix

    def __repr__(self) -> str:
        d_out, d_in = self.shape
        return f"Dense({d_out}×{d_in}, {_dtype_name(self.matrix.dtype)})"


@dataclass(frozen=True)
class Factored:
    """ΔW = ``scale · B @ A`` with ``B (d_out, r)`` and ``A (r, d_in)``.

    Kept factored, so that the singular values come from an r×r problem and
    ΔW is never materialised.

    Args:
        B: the up-projection, ``(d_out, r)``.
        A: the down-projection, ``(r, d_in)``.
        scale: the factor s in front of ``B @ A`` (α/r for LoRA, α/√r for rsLoRA).

    Raises:
        ValueError: B or A is not 2-D, or their inner dimensions differ.

    Example:
        >>> import torch
        >>> update = Factored(torch.ones(4, 1), torch.ones(1, 3), scale=0.5)
        >>> update, update.shape, update.rank
        (Factored(4×3, r=1, scale=0.5, float32), (4, 3), 1)
        >>> update.to_dense()[0]
        tensor([0.5000, 0.5000, 0.5000], dtype=torch.float64)
    """

    B: torch.Tensor  # (d_out, r)
    A: torch.Tensor  # (r, d_in)
    scale: float

    def __post_init__(self) -> None:
        if self.B.ndim != 2 or self.A.ndim != 2 or self.B.shape[1] != self.A.shape[0]:
            raise ValueError(
                f"Factored needs B (d_out, r) and A (r, d_in); got B {tuple(self.B.shape)} "
                f"and A {tuple(self.A.shape)}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.B.shape[0], self.A.shape[1])

    @property
    def rank(self) -> int:
        """The inner dimension r (an upper bound on rank(ΔW))."""
        return self.A.shape[0]

    @property
    def rank_ceiling(self) -> int:
        """The most rank this ΔW can have: r, capped by ``min(d_out, d_in)``."""
        return min(self.rank, *self.shape)

    def to_dense(self) -> torch.Tensor:
        """Merge into a float64 matrix ``(d_out, d_in)``; for tests and small cases."""
        return self.scale * (self.B.double() @ self.A.double())

    def __repr__(self) -> str:
        d_out, d_in = self.shape
        return (
            f"Factored({d_out}×{d_in}, r={self.rank}, scale={self.scale:.6g}, "
            f"{_dtype_name(self.B.dtype)})"
        )


@dataclass(frozen=True)
class LayerDelta:
    """One module's weight update and what is known about where it came from.

    ``weight_rms`` is the root-mean-square entry of the weights ΔW was taken
    from (for the numerical-rank rounding floor) and ``base_norm`` is
    ‖W_0‖_F (for ``relative_norm``); both are ``None`` when the base weights
    are not known.

    Args:
        layer: the layer index.
        role: the module's role (``"k"``, ``"v"``, ``"up"``, …).
        name: the tensor (or module) name in the checkpoint.
        update: ΔW, ``Dense`` or ``Factored``, ``(d_out, d_in)``.
        source_dtype: the dtype the weights were stored in.
        head: the head of a multi-head module; ``None`` (the default): no heads.
        weight_rms: the root-mean-square entry of the weights ΔW was taken
            from; ``None`` (the default): not known.
        base_norm: ‖W_0‖_F; ``None`` (the default): no base weights.
        expert: the expert of a mixture-of-experts role; ``None`` (the
            default): not an expert.

    Example:
        >>> import torch
        >>> update = Factored(torch.ones(4, 1), torch.ones(1, 3), scale=0.5)
        >>> delta = LayerDelta(3, "v", "layers.3.v_proj", update, torch.float32)
        >>> delta.key, delta.shape
        ('L3.v', (4, 3))
    """

    layer: int
    role: str
    name: str
    update: Dense | Factored
    source_dtype: torch.dtype
    head: int | None = None
    weight_rms: float | None = None
    base_norm: float | None = None
    expert: int | None = None  # the expert of a mixture-of-experts role (``L3.gate.e5``)

    @property
    def shape(self) -> tuple[int, int]:
        """``(d_out, d_in)`` of ΔW."""
        return self.update.shape

    def __repr__(self) -> str:
        head = "" if self.head is None else f", head {self.head}"
        return f"LayerDelta({self.key}, {self.name!r}, {self.update!r}{head})"

    @property
    def key(self) -> str:
        """Its spectrum's key, as in reports: ``L3.k``, ``L3.k.h1`` or ``L3.gate.e5``."""
        return spectrum_key(self.layer, self.role, self.head, self.expert)


def spectrum_key(layer: int, role: str, head: int | None = None, expert: int | None = None) -> str:
    """The one name of a module's spectrum: ``L3.k``, ``L3.k.h1`` (head 1), ``L3.gate.e5``.

    Every place that stores or looks up a spectrum (report rows, the spectra
    file, scales, flags, logger scalars, figures) names it with this function.

    Args:
        layer: the layer index.
        role: the module's role (``"k"``, ``"gate"``, …).
        head: the head of a multi-head module; ``None`` (the default): none.
        expert: the expert of a mixture-of-experts role; ``None`` (the
            default): none.

    Returns:
        The key, ``L{layer}.{role}``, then ``.e{expert}``, then ``.h{head}``.

    Example:
        >>> spectrum_key(3, "gate", head=1, expert=5)
        'L3.gate.e5.h1'
    """
    key = f"L{layer}.{role}" + ("" if expert is None else f".e{expert}")
    return key + ("" if head is None else f".h{head}")


def _dtype_name(dtype: torch.dtype) -> str:
    """``float32`` for ``torch.float32``."""
    return str(dtype).removeprefix("torch.")
