"""The shapes of an image-model file's modules: checked, and each module's rank, shape and scale.

A mixin of ``ImageLoraCheckpoint`` (``common.py``): each method's tensors
must fit one another (``lora_up`` (d_out, r) with ``lora_down`` (r, d_in[, kh,
kw]); LoHa's four factors; LoKr's two, whole or split), and a module's ΔW is
``(d_out, d_in)`` with a conv kernel flattened to ``(out, in·kh·kw)``. The
rank is what the scale divides by: ``lora_down``'s rows, ``hada_w1_b``'s
rows, LoKr's factorised side (``lokr_w1_a``'s columns, else
``lokr_w2_a``'s); a LoKr with whole factors has none, and scale 1. LyCORIS's
Tucker forms (``lora_mid``, ``hada_t1``/``t2``, ``lokr_t2``) are made for
conv kernels and refused on a projection.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ...errors import FormatError

if TYPE_CHECKING:
    from ..storage.tensors import TensorStore
    from .common import ImageModule

__all__ = ["ModuleShapes"]


class ModuleShapes:
    """Shape checks of ``ImageLoraCheckpoint``; it gives ``store`` and ``scale_of``."""

    store: TensorStore

    def _shape(self, module: ImageModule, part: str) -> tuple[int, ...]:
        if part not in module.parts:
            raise FormatError(
                f"{self.store.path}: module {module.module} has no {part} tensor, which a "
                f"{module.variant} module needs; found {', '.join(sorted(module.parts))}"
            )
        return tuple(self.store.info(module.parts[part]).shape)

    def _is_conv(self, module: ImageModule) -> bool:
        for part in ("lora_down", "hada_w1_b", "lokr_w2", "lokr_w2_b", "diff"):
            if part in module.parts and len(self.store.info(module.parts[part]).shape) > 2:
                return True
        return "lora_mid" in module.parts or "hada_t1" in module.parts or "lokr_t2" in module.parts

    def _bad(self, module: ImageModule, expected: str, found: str) -> FormatError:
        where = f"{self.store.path}: {module.module}"
        return FormatError(f"{where}: expected {expected}; found {found}")

    def _resolve(self, module: ImageModule) -> None:
        """Check a mapped module's shapes; set its rank, (d_out, d_in) and scale."""
        for part in ("lora_mid", "hada_t1", "hada_t2", "lokr_t2"):
            if part in module.parts:
                raise FormatError(
                    f"{self.store.path}: {module.module} uses LyCORIS's Tucker form ({part}, made "
                    "for conv kernels) on an attention or MLP projection, which spectra does not "
                    "rebuild"
                )
        getattr(self, f"_resolve_{module.variant.lower()}")(module)
        if module.variant == "full":
            module.scale, module.scale_source = 1.0, "LyCORIS full: ΔW stored whole"
        elif module.variant == "LoKr" and module.rank is None:
            module.scale = 1.0
            module.scale_source = "LoKr with whole w1 and w2: scale 1 whatever alpha says"
        else:
            module.scale, module.scale_source = self.scale_of(module)

    def _resolve_lora(self, module: ImageModule) -> None:
        down, up = self._shape(module, "lora_down"), self._shape(module, "lora_up")
        rank = down[0]
        if len(down) < 2 or len(up) < 2 or up[1] != rank or any(d != 1 for d in up[2:]):
            raise self._bad(
                module,
                f"lora_up (d_out, r) and lora_down (r, d_in) with the same r = {rank} (the rows "
                "of lora_down)",
                f"lora_up {up} and lora_down {down}",
            )
        module.rank, module.shape = rank, (up[0], math.prod(down[1:]))

    def _resolve_loha(self, module: ImageModule) -> None:
        w1a, w1b = self._shape(module, "hada_w1_a"), self._shape(module, "hada_w1_b")
        w2a, w2b = self._shape(module, "hada_w2_a"), self._shape(module, "hada_w2_b")
        rank = w1b[0]
        fits = len(w1a) == len(w2a) == 2 and w1a[1] == rank and w2a[1] == w2b[0]
        fits = fits and w1a[0] == w2a[0] and w1b[1:] == w2b[1:]
        if not fits:
            raise self._bad(
                module,
                "hada_w1_a, hada_w2_a (d_out, r) and hada_w1_b, hada_w2_b (r, d_in) of one shape",
                f"hada_w1_a {w1a}, hada_w1_b {w1b}, hada_w2_a {w2a}, hada_w2_b {w2b}",
            )
        module.rank, module.shape = rank, (w1a[0], math.prod(w1b[1:]))

    def _factor_shape(self, module: ImageModule, which: str) -> tuple[tuple[int, int], int | None]:
        """(rows, columns) of LoKr's w1 or w2 (a conv kernel flattened), and its rank if split."""
        if f"lokr_{which}" in module.parts:
            shape = self._shape(module, f"lokr_{which}")
            return (shape[0], math.prod(shape[1:])), None
        a, b = self._shape(module, f"lokr_{which}_a"), self._shape(module, f"lokr_{which}_b")
        if len(a) != 2 or a[1] != b[0]:
            raise self._bad(
                module,
                f"lokr_{which}_a (m, r) and lokr_{which}_b (r, n) with the same r",
                f"lokr_{which}_a {a} and lokr_{which}_b {b}",
            )
        return (a[0], math.prod(b[1:])), a[1]

    def _resolve_lokr(self, module: ImageModule) -> None:
        (p, q), rank1 = self._factor_shape(module, "w1")
        (m, n), rank2 = self._factor_shape(module, "w2")
        module.rank = rank1 if rank1 is not None else rank2  # LyCORIS's rank_scale
        module.shape = (p * m, q * n)

    def _resolve_full(self, module: ImageModule) -> None:
        shape = self._shape(module, "diff")
        module.shape = (shape[0], math.prod(shape[1:]))
