"""An image-model adapter against its base (``--base``): W0 per module, checks, and DoRA's axis.

A mixin of ``ImageLoraCheckpoint`` (``common.py``). With a base
(``storage.image_base.ImageBase``: a diffusers pipeline folder or a single
SD 1.x / SDXL / Flux file) each adapted module finds its W0 by its name in
its model part (``ImageModule.component``, ``ImageModule.path``), whatever
the scheme the base names it in; W0 is laid out as the adapted module is (a
kohya Flux ``img_attn_qkv`` over a diffusers base stacks ``to_q``, ``to_k``,
``to_v``; a diffusers ``to_q`` over a BFL base takes its third of ``qkv``).
That gives ``relative_norm`` (``LayerDelta.base_norm``), ``base_weight``
(intruder dimensions, ESD) and DoRA.

A selected module is refused before any work when the base has its model
part but no weight of that name (``BaseMismatchError``), or one of another
shape (the module, both shapes, the base). A model part the base does not
hold at all (a Flux file holds no text encoder) leaves those modules without
W0, and a warning says so; a DoRA module there is refused.

DoRA's magnitude comes in two conventions. peft and diffusers
(``lora_magnitude_vector``) and LyCORIS with ``wd_on_output=True`` (the
default of its kohya wrapper in 4.1) normalise each output row: ``(d_out,)`` or
``(d_out, 1)``; LyCORIS's original weight decomposition (``dora_scale``,
``wd_on_output=False``, what kohya-layout DoRA files held first) normalises
each input column: ``(1, d_in)`` (``lycoris/functional/general.py``,
``weight_decompose``). The axis is read from the shape: ``(1, d_in)`` and
``(d_out, 1)`` say it even on a square layer, a flat vector on a layer that
is not square by its length. Only a flat vector on a square layer cannot
tell (a loader that reads it the wrong way computes a wrong weight without an
error); the writer decides then: ``dora_scale`` (kohya / LyCORIS) the input
columns, ``lora_magnitude_vector`` (peft / diffusers) the output rows, and a
warning says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...arguments import BASE
from ...errors import BaseMismatchError, FormatError, MissingBaseError
from ..storage.image_base import BaseModule, ImageBase

if TYPE_CHECKING:
    from ..base import Selection
    from ..naming.architectures import ModuleRef
    from ..storage.tensors import TensorStore
    from .common import ImageModule

__all__ = ["DORA_PARTS", "ImageBaseLink", "dora_axis"]

DORA_PARTS = ("dora_scale", "lora_magnitude_vector")  # LyCORIS's and kohya's, peft's and diffusers'
_AXES = {"out": "output rows", "in": "input columns"}


def dora_axis(part: str, shape: tuple[int, ...], d_out: int, d_in: int) -> tuple[str, str] | None:
    """The axis DoRA's magnitude normalises (``"out"`` rows, ``"in"`` columns), and why.

    None when the shape fits neither.

    ``part`` is the writer's name for it (module docstring).
    """
    if not shape or any(d != 1 for d in shape[2:]):
        return None
    if len(shape) >= 2:
        if shape[:2] == (d_out, 1):
            return "out", f"{part} of shape (d_out, 1)"
        if shape[:2] == (1, d_in):
            return "in", f"{part} of shape (1, d_in)"
        return None
    if d_out == d_in == shape[0]:
        axis = "in" if part == "dora_scale" else "out"
        writer = "kohya / LyCORIS" if axis == "in" else "peft / diffusers"
        return axis, f"flat {part} on a square layer: its writer's ({writer}) axis"
    if shape[0] in (d_out, d_in):
        axis = "out" if shape[0] == d_out else "in"
        return axis, f"flat {part} of length d_{axis}"
    return None


class ImageBaseLink:
    """Base and DoRA support of ``ImageLoraCheckpoint``, which gives the attributes below
    and ``rows(ref)``."""

    store: TensorStore
    by_name: dict[str, ImageModule]
    modules: dict[tuple[int, str], ModuleRef]
    image_base: ImageBase | None = None

    # -- DoRA ------------------------------------------------------------------

    def resolve_dora(self, module: ImageModule) -> None:
        """Set ``module.dora`` (its axis) and ``dora_how`` from its magnitude, or refuse it."""
        part = next((p for p in DORA_PARTS if p in module.parts), None)
        if part is None:
            return
        shape = tuple(self.store.info(module.parts[part]).shape)
        d_out, d_in = module.shape
        found = dora_axis(part, shape, d_out, d_in)
        if found is None:
            raise FormatError(
                f"{self.store.path}: {module.module}.{part} should hold one magnitude per output "
                f"row ({d_out},) / ({d_out}, 1) or per input column (1, {d_in}) of its "
                f"({d_out}, {d_in}) weight; found shape {shape}"
            )
        module.dora, module.dora_how = found
        module.dora_guess = len(shape) == 1 and d_out == d_in

    def dora_magnitude(self, module: ImageModule) -> torch.Tensor:
        part = next(p for p in DORA_PARTS if p in module.parts)
        return self.store.load(module.parts[part])

    def dora_details(self) -> dict[str, object]:
        """How each DoRA module's axis was read, counted: for ``details()``."""
        counts: dict[str, int] = {}
        for name in dict.fromkeys(ref.module for ref in self.modules.values()):
            module = self.by_name[name]
            if module.dora:
                text = f"over {_AXES[module.dora]} ({module.dora_how})"
                counts[text] = counts.get(text, 0) + 1
        return {"DoRA magnitude": counts} if counts else {}

    # -- the base ------------------------------------------------------------------

    def base_entry(self, module: ImageModule) -> BaseModule | None:
        """The base's W0 of a module; None without a base or when the base lacks its model part."""
        base = self.image_base
        if base is None or not base.components_for(module.component):
            return None
        entry = base.find(module.component, module.path)
        if entry is None:
            part = module.component or "any part"
            raise BaseMismatchError(
                f"{base.path}: expected a weight for {module.module} ({part}: {module.path}) in "
                f"the base, which holds {base.describe()}; found none. Is {BASE} the model this "
                "adapter was trained on?"
            )
        return entry

    def check_base(self, selection: Selection) -> None:
        """Refuse a selection whose modules the base does not fit, or DoRA without W0."""
        names = dict.fromkeys(self.modules[key].module for key in selection.keys)
        unbased = []
        for name in names:
            module = self.by_name[name]
            entry = self.base_entry(module)
            if entry is not None:
                found = self.image_base.shape(entry)
                if found != module.shape:
                    raise BaseMismatchError(
                        f"{self.image_base.path}: {module.module} is {module.shape} in the adapter "
                        f"but its base weight {entry.tensors} is {found}; is {BASE} the model this "
                        "adapter was trained on?"
                    )
            elif module.dora:
                unbased.append(name)
        if unbased:
            more = f" and {len(unbased) - 1} more" if len(unbased) > 1 else ""
            where = (
                f"the base {self.image_base.path} holds no {self.by_name[unbased[0]].component} "
                f"weights ({self.image_base.describe()}); pass"
                if self.image_base is not None
                else "pass"
            )
            raise MissingBaseError(
                f"{self.store.path}: {unbased[0]}{more} carry a DoRA magnitude "
                f"({', '.join(DORA_PARTS)}): their ΔW = V·m/‖V‖ − W0, V = W0 + s·ΔW_dir, "
                f"needs the base weight W0: {where} {BASE('DIR')}, the model the adapter was "
                "trained on (a diffusers pipeline folder or a single-file checkpoint)"
            )

    def module_base(self, ref: ModuleRef, base_ref: object = None) -> torch.Tensor | None:
        """W0 of the whole adapted module ``(d_out, d_in)`` float64, or None."""
        entry = self.base_entry(self.by_name[ref.module])
        return None if entry is None else self.image_base.weight(entry)

    def base_weight(self, key: tuple[int, str]) -> torch.Tensor | None:
        ref = self.modules[key]
        whole = self.module_base(ref)
        return None if whole is None else whole[self.rows(ref)]  # (d_out of the role, d_in)

    def base_warnings(self) -> list[str]:
        """The modules left without W0 because the base lacks their model part."""
        if self.image_base is None:
            return []
        missing: dict[str, list[str]] = {}
        for name in dict.fromkeys(ref.module for ref in self.modules.values()):
            module = self.by_name[name]
            if not self.image_base.components_for(module.component):
                missing.setdefault(module.component or "model", []).append(name)
        return [
            f"the base holds no {part} weights ({self.image_base.describe()}): relative_norm and "
            f"the metrics that need W0 are left empty for its {len(names)} modules "
            f"({', '.join(names[:2])}{' …' if len(names) > 2 else ''})"
            for part, names in missing.items()
        ]
