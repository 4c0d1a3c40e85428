"""What ``describe()`` reports of a checkpoint, computing nothing: its modules and facts.

``ModuleInfo`` is one module before anything is computed; ``CheckpointInfo``
the whole checkpoint (format, variant, base, modules, warnings, details, the
tensors not analysed and what its files say about its training). Both are
plain records that the ``inspect`` command prints and ``--json`` dumps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

__all__ = ["CheckpointInfo", "ModuleInfo", "group_by_reason", "summarise_not_analysed"]


@dataclass(frozen=True)
class ModuleInfo:
    """One module as ``describe()`` sees it, before anything is computed.

    Args:
        layer: the layer index.
        role: the module's role (``"k"``, ``"v"``, …).
        name: the tensor (or module) name in the checkpoint.
        shape: ``(d_out, d_in)`` of ΔW; a side is None when only the base
            says it (VeRA's d_in, OFT's and MiSS's d_out without a base).
        dtype: the stored dtype, e.g. ``"bfloat16"``.
        kind: ``"dense"`` or ``"factored"``.
        rank: the adapter rank r; ``None`` (the default) for a dense ΔW.
        scale: the adapter's scale; ``None`` (the default): none or not known.
        scale_source: where the scale came from, e.g. ``"config: lora_alpha/r"``;
            ``None`` (the default): no scale.
        heads: the number of heads of a multi-head module; ``None`` (the
            default): no heads.
        experts: the number of experts of a mixture-of-experts role (one row
            each); ``None`` (the default): not one.

    Example:
        >>> info = ModuleInfo(0, "v", "layers.0.v_proj", (64, 64), "float32", "factored", rank=8)
        >>> info.role, info.shape, info.rank
        ('v', (64, 64), 8)
    """

    layer: int
    role: str
    name: str  # the tensor (or module) name in the checkpoint
    shape: tuple[int | None, int | None]  # (d_out, d_in) of ΔW; None: known from the base only
    dtype: str
    kind: str  # "dense" or "factored"
    rank: int | None = None  # the adapter rank r; None for a dense ΔW
    scale: float | None = None
    scale_source: str | None = None  # where the scale came from, e.g. "config: lora_alpha/r"
    heads: int | None = None  # number of heads of a multi-head module
    experts: int | None = None  # number of experts of a mixture-of-experts role (one row each)


@dataclass
class CheckpointInfo:
    """The result of ``describe()``: format, variant, modules and warnings.

    Args:
        path: the checkpoint's path.
        format: the registered format's name (``"peft"``, ``"full"``, …).
        variant: a human name of what was detected, e.g. ``"LoRA"``.
        base: the base model's path; ``None``: none.
        modules: one ``ModuleInfo`` per (layer, role).
        warnings: warnings about the checkpoint as a whole; default none.
        details: format-specific facts (files, config fields); default none.
        not_analysed: ``(tensor, reason)`` for every tensor no ΔW uses;
            default none.
        training: what the files say about the training that made them
            (``storage.metadata``: who wrote it, its fields, dataset tags);
            default none.

    Example:
        >>> info = CheckpointInfo("adapter", "peft", "LoRA", None, [])
        >>> info.not_analysed = [("lm_head.weight", "modules_to_save"), ("b", "bias")]
        >>> info.not_analysed_by_reason()
        {'modules_to_save': ['lm_head.weight'], 'bias': ['b']}
    """

    path: str
    format: str
    variant: str
    base: str | None
    modules: list[ModuleInfo]
    warnings: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)
    not_analysed: list[tuple[str, str]] = field(default_factory=list)  # (tensor, reason)
    training: dict[str, object] = field(default_factory=dict)  # what the file says of its training

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def not_analysed_by_reason(self) -> dict[str, list[str]]:
        """The tensors left out, grouped by reason (in order of first appearance)."""
        return group_by_reason(self.not_analysed)


def group_by_reason(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """``{reason: [tensor, …]}`` from ``(tensor, reason)`` pairs, in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for name, reason in pairs:
        groups.setdefault(reason, []).append(name)
    return groups


def summarise_not_analysed(pairs: Sequence[tuple[str, str]], examples: int = 2) -> str:
    """One line per reason: how many tensors are not analysed, and why (for warnings, errors)."""
    parts = []
    for reason, names in group_by_reason(pairs).items():
        shown = ", ".join(names[:examples]) + (" …" if len(names) > examples else "")
        parts.append(f"{len(names)} not analysed ({reason}): {shown}")
    return "; ".join(parts)
