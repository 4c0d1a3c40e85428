"""A module's shape from the base model, for PEFT methods whose adapter does not save it.

VeRA and PVeRA save no d_in, RandLoRA neither dimension, FourierFT, SHiRA,
MiSS and C3A's kin only a spectrum, values or a block, and the methods that
multiply W0 (``multiplicative.py``) or subtract from it (``newer.py``) need
its shape as much as its values. They all look the module up in the base
the same way (``base_shape``) and refuse the same way when it is not there
(``module_base_shape``: a ``MissingBaseError`` naming the base argument);
``ShapeFromBase`` is the variant whose whole shape comes from the base.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arguments import BASE
from ...errors import MissingBaseError
from .variant import Adapted, Variant

if TYPE_CHECKING:
    from .checkpoint import PeftCheckpoint

__all__ = ["ShapeFromBase", "base_shape", "module_base_shape", "no_base"]


def base_shape(ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int] | None:
    """(d_out, d_in) of an adapted module's weight in the base; None: no base, or not mapped.

    The adapted module is found by its path (an expert's too); a fused
    projection's shape is its whole module's.
    """
    if ckpt.base_weights is None:
        return None
    for key, group in ckpt.modules.items():
        for member in group.members:
            if member.module != adapted.module:
                continue
            base_group = ckpt.base_weights.modules.get(key)
            found = {} if base_group is None else {m.expert: m for m in base_group.members}
            base_ref = found.get(member.expert)
            return None if base_ref is None else ckpt.base_weights.module_shape(base_ref)
    return None


def no_base(ckpt: PeftCheckpoint) -> str:
    """Why the base gave no shape: it has no such module, or there is no base model."""
    return f"{ckpt.base} has no such module" if ckpt.base_weights else "no base model"


def module_base_shape(
    ckpt: PeftCheckpoint, adapted: Adapted, method: str, what: str = "its shape (d_out, d_in)"
) -> tuple[int, int]:
    """(d_out, d_in) of a module from the base, or MissingBaseError naming the base argument.

    ``method`` is the method's name as the message shows it (``VeRA``),
    ``what`` what of the shape it needs (``its d_in``).
    """
    shape = base_shape(ckpt, adapted)
    if shape is None:
        raise MissingBaseError(
            f"{ckpt.store.path}: {method} module {adapted.module} needs {what}, which only the "
            f"base model gives ({no_base(ckpt)}): pass {BASE('DIR')}"
        )
    return shape


class ShapeFromBase(Variant):
    """A variant whose module shape is saved nowhere in the adapter: it comes from the base.

    Without a base, analysing is refused (``MissingBaseError`` naming the
    base argument) and ``describe()`` shows both dimensions as unknown.
    """

    def needs_base(self, ckpt: PeftCheckpoint) -> bool:
        return True

    def warnings(self, ckpt: PeftCheckpoint) -> list[str]:
        if ckpt.base_weights is None:
            return [
                f"{self.name(ckpt)}: each module's shape comes from the base model; shapes show "
                f"what the adapter does not give as unknown and analysing needs {BASE('DIR')}"
            ]
        return []

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        return module_base_shape(ckpt, adapted, self.name(ckpt))

    def shape_before_base(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int | None]:
        return (None, None)
