"""LoRA-family files of image models (kohya, LyCORIS, diffusers): the checkpoint they share.

The format modules (``kohya.py``, ``diffusers.py``) parse their key
layouts into ``ImageModule`` records — the module's name in the file, whether
it belongs to a text encoder, and its tensors by canonical part — and say
where a module's scale comes from (``scale_of``). This module maps the
modules to (layer, role) with ``naming.diffusion`` (an ordinal per block, the
block names in ``details()``), checks their shapes, and rebuilds ΔW in
float64 as LyCORIS's forward pass applies it (the formulas are
``methods.lora`` and ``methods.lycoris``):

- LoRA / LoCon: ``lora_down`` (r, in[, kh, kw]), ``lora_up`` (out, r[, 1, 1]);
  ``ΔW = s · up @ down``, a conv kernel flattened to (out, in·kh·kw) (factored);
- LoHa: ``hada_w1_a`` (out, r), ``hada_w1_b`` (r, in), ``hada_w2_a``, ``hada_w2_b``;
  ``ΔW = s · (w1a @ w1b) ⊙ (w2a @ w2b)`` (dense);
- LoKr: ``lokr_w1`` or ``lokr_w1_a @ lokr_w1_b``, ``lokr_w2`` or
  ``lokr_w2_a @ lokr_w2_b``; ``ΔW = s · kron(w1, w2)`` (dense);
- full (LyCORIS): ``diff`` (out, in[, …]) is ΔW (dense).

The scale is ``s = alpha / r``: r is the rank in the tensors (``lora_down``'s
rows, ``hada_w1_b``'s rows, LoKr's factorised side: ``lokr_w1_a``'s columns,
else ``lokr_w2_a``'s), alpha what the format says (a scalar ``alpha`` tensor;
missing or 0 means alpha = r, scale 1, as kohya and LyCORIS read it).
LyCORIS writes ``alpha · r/√r`` when it trained with rsLoRA, so alpha / r is
its α/√r: the stored alpha already folds rsLoRA in. A LoKr with both w1 and
w2 whole has scale 1 whatever alpha says (LyCORIS sets alpha = r for it, and
``functional.lokr.rank_scale`` divides by alpha itself).

LoKr and LoHa scale, decided against LyCORIS 4.1.3 (``lycoris/modules/lokr.py``,
``loha.py``): ``get_weight()`` already multiplies by ``self.scale`` and
``get_diff_weight()`` multiplies by it again, so ``merge_to()`` /
``get_merged_weight()`` add ``s² · kron(w1, w2)``; the forward passes
(``_rebuild_forward``, ``bypass_forward_diff``) and ``functional.lokr.diff_weight``
apply ``s`` once, as do the loaders that apply these files for inference.
spectra rebuilds the update the model applies when it runs: ``s`` once.

With a base (``--base``: a diffusers pipeline folder, or a single-file SD
1.x / SDXL / Flux checkpoint) each module gets its W0 (``bases.py``): relative
norms, ``base_weight``, and DoRA (``dora_scale`` / ``lora_magnitude_vector``),
whose ΔW is ``V · m / ‖V‖ − W0`` with ``V = W0 + ΔW_dir`` (``methods.dora.decompose``),
the norm over output rows or input columns as the file's convention says.
Without one, a selection that holds a DoRA module is refused. The shape
checks are ``shapes.py``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ...arguments import BASE
from ...delta import Dense
from ...errors import FormatError
from ..adapter import AdaptedModule, AdapterCheckpoint, Rows, Update
from ..base import Selection, summarise_not_analysed
from ..methods import ALL_ROWS, dora, lora, lycoris
from ..naming.architectures import ModuleRef
from ..naming.diffusion import match_roles, natural_key, reason_for
from ..storage.image_base import ImageBase
from ..storage.tensors import TensorStore
from .bases import DORA_PARTS, ImageBaseLink
from .shapes import ModuleShapes

__all__ = ["METHOD_PARTS", "ImageLoraCheckpoint", "ImageModule", "safetensors_metadata"]

# The parts each method's ΔW is rebuilt from ("alpha" and "dora_scale" are read by all).
METHOD_PARTS = {
    "LoRA": ("lora_down", "lora_up", "lora_mid"),  # lora_mid: Tucker LoCon (conv only)
    "LoHa": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "LoKr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
    "full": ("diff",),
}
_SHARED_PARTS = ("alpha", *DORA_PARTS)
UNKNOWN_METHOD = (
    "not a LoRA, LoCon, LoHa, LoKr or full module (LyCORIS IA3, OFT, BOFT, GLoRA, norm, … "
    "are not rebuilt by spectra)"
)
BIAS = "bias of the update (diff_b, lora_up bias): adds a constant, not part of ΔW's spectrum"


@dataclass
class ImageModule(AdaptedModule):
    """One adapted module of an image-model file (``module``: its key prefix in the file,
    e.g. ``lora_unet_…_to_k`` or ``unet.….to_k``), and what only these files say."""

    text_encoder: bool = False  # a text encoder's module (for the reason it is left out, if it is)
    variant: str = ""  # LoRA, LoHa, LoKr or full, from its parts
    conv: bool = False  # a conv kernel, flattened to (out, in·kh·kw)
    component: str = ""  # its model part, as diffusers names it: unet, text_encoder_2, …; "" any
    path: str = ""  # its path inside that part, as the file writes it (dots or "_")
    dora: str | None = None  # DoRA: the axis its magnitude normalises, "out" rows or "in" columns
    dora_how: str = ""  # how that axis was read
    dora_guess: bool = False  # a flat magnitude on a square layer: the axis is its writer's


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` strings of a ``.safetensors`` header ({} for other files)."""
    if path.suffix != ".safetensors":
        return {}
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if not 2 <= length <= min(100 * 2**20, path.stat().st_size - 8):
                return {}
            header = json.loads(handle.read(length))
    except (OSError, ValueError):
        return {}  # the tensor store says what is wrong with the file when it reads it
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def method_of(parts: dict[str, str]) -> str | None:
    """The method a module's parts belong to, or None."""
    if "lora_down" in parts or "lora_up" in parts:
        return "LoRA"
    if any(part.startswith("hada_") for part in parts):
        return "LoHa"
    if any(part.startswith("lokr_") for part in parts):
        return "LoKr"
    if "diff" in parts:
        return "full"
    return None


class ImageLoraCheckpoint(ModuleShapes, ImageBaseLink, AdapterCheckpoint):
    """The modules of a kohya / LyCORIS / diffusers file, mapped and rebuilt (module docstring)."""

    def __init__(
        self,
        path: Path,
        base: Path | None,
        store: TensorStore,
        modules: list[ImageModule],
        left_out: list[tuple[str, str]],
    ):
        super().__init__(path, base)
        self.image_base = ImageBase(base, BASE) if base is not None else None
        self.store = store
        self.by_name = {module.module: module for module in modules}
        self._left_out = list(left_out)  # (tensor, reason)
        self._map()
        if not self.modules:
            raise FormatError(
                f"{store.path}: no attention or MLP projection is adapted in this {self.format} "
                f"file. {summarise_not_analysed(self.not_analysed()) or 'It holds no tensors.'}"
            )

    # -- what the format modules provide ------------------------------------

    def scale_of(self, module: ImageModule) -> tuple[float, str]:
        """The scale of a LoRA, LoHa or factorised LoKr module and its source; formats override.

        By default alpha / r from the module's ``alpha`` tensor; none, or 0,
        means alpha = r (kohya's and LyCORIS's reading): scale 1.
        """
        alpha = self.alpha_tensor(module)
        if alpha is None or alpha == 0:
            what = "alpha tensor 0" if alpha == 0 else "no alpha tensor"
            return 1.0, f"{what}: alpha = r, scale 1"
        source = f"alpha tensor: {alpha:g}/r = {alpha:g}/{module.rank}"
        return lora.scale(module.rank, alpha), source

    def alpha_tensor(self, module: ImageModule) -> float | None:
        """The module's scalar ``alpha`` tensor, or None when it has none."""
        if "alpha" not in module.parts:
            return None
        name = module.parts["alpha"]
        shape = self.store.info(name).shape
        if math.prod(shape) != 1:
            raise FormatError(
                f"{self.store.path}: {name} should be a scalar (the alpha of alpha/r); found a "
                f"tensor of shape {tuple(shape)}"
            )
        return float(self.store.load(name).double().reshape(()))

    # -- mapping -------------------------------------------------------------

    def _map(self) -> None:
        mapped = {}
        for module in self.by_name.values():
            method = method_of(module.parts)
            if method is None:
                self._left_out += [(t, UNKNOWN_METHOD) for t in module.parts.values()]
                continue
            module.variant = method
            module.conv = self._is_conv(module)
            found = match_roles(module.module)
            if found is None:
                reason = reason_for(module.module, module.text_encoder, module.conv)
                self._left_out += [(t, reason) for t in module.parts.values()]
                continue
            mapped[module.module] = found
        blocks = sorted({found.block for found in mapped.values()}, key=natural_key)
        self.layers = {block: layer for layer, block in enumerate(blocks)}
        self.modules: dict[tuple[int, str], ModuleRef] = {}
        for name, found in mapped.items():
            module = self.by_name[name]
            self._resolve(module)
            self.resolve_dora(module)
            used = {*METHOD_PARTS[module.variant], *_SHARED_PARTS}
            for part, tensor in module.parts.items():
                if part not in used:
                    bias = part.endswith("bias") or part == "diff_b"
                    why = BIAS if bias else f"{part}: not a part of a {module.variant} module's ΔW"
                    self._left_out.append((tensor, why))
            layer = self.layers[found.block]
            for index, role in enumerate(found.roles):
                previous = self.modules.get((layer, role))
                if previous is not None:
                    raise FormatError(
                        f"{self.store.path}: two modules claim block {found.block} role {role!r}: "
                        f"{previous.module} and {name}"
                    )
                self.modules[(layer, role)] = ModuleRef(
                    layer, role, name, found.family, fused=found.fused, index=index
                )

    # -- AdapterCheckpoint ---------------------------------------------------

    @property
    def variant(self) -> str:
        methods = {}
        for ref in self.modules.values():
            module = self.by_name[ref.module]
            name = "LoCon" if module.variant == "LoRA" and module.conv else module.variant
            name = name if name != "full" else "LyCORIS full"
            if module.dora:
                name = "DoRA" if name == "LoRA" else f"{name} with DoRA"
            methods[name] = None
        return " + ".join(methods)

    def rows(self, ref: ModuleRef) -> Rows:
        if ref.fused != "flux_single":
            return super().rows(ref)
        d_out, d_in = self.module_shape(ref)  # rows q, k, v of d_in each, then the MLP's
        if d_out <= 3 * d_in:
            raise FormatError(
                f"{self.store.path}: {ref.module} should have 3·d_in + mlp rows (Flux linear1: "
                f"q, k, v, then the MLP input); found shape ({d_out}, {d_in})"
            )
        start = ref.index * d_in
        return slice(start, start + d_in) if ref.index < 3 else slice(start, d_out)

    def module_shape(self, ref: ModuleRef) -> tuple[int, int]:
        return self.by_name[ref.module].shape

    def module_dtype(self, ref: ModuleRef) -> torch.dtype:
        module = self.by_name[ref.module]
        part = next(p for p in METHOD_PARTS[module.variant] if p in module.parts)
        return self.store.info(module.parts[part]).dtype

    def factors(self, ref: ModuleRef) -> dict[str, object]:
        module = self.by_name[ref.module]
        return {
            "kind": "factored" if module.variant == "LoRA" and not module.dora else "dense",
            "rank": module.rank,
            "scale": module.scale,
            "scale_source": module.scale_source,
            "heads": None,
        }

    def check(self, selection: Selection) -> None:
        self.check_base(selection)
        super().check(selection)

    def _load(self, module: ImageModule, part: str) -> torch.Tensor:
        return self.store.load(module.parts[part]).double()

    def updates(
        self, ref: ModuleRef, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        module = self.by_name[ref.module]
        if module.dora is None:
            return [(None, self._update(module, rows))]
        if base is None:  # check() refuses this first
            raise FormatError(f"{self.store.path}: {module.module}: DoRA needs the base weight W0")
        direction = self._update(module, ALL_ROWS).to_dense()  # (d_out, d_in): s·ΔW, every row
        magnitude = self.dora_magnitude(module)  # (d_out,) or (d_in,), as module.dora says
        return [(None, dora.decompose(base, direction, magnitude, module.dora, rows))]

    def _update(self, module: ImageModule, rows: Rows) -> Update:
        """The method's own ΔW (the direction, for DoRA), kept to ``rows``."""
        d_out, d_in = module.shape
        s = module.scale
        if module.variant == "LoRA":  # a conv kernel flattened: (r, in, kh, kw) → (r, in·kh·kw)
            B = self.store.load(module.parts["lora_up"]).reshape(d_out, module.rank)  # (out, r)
            A = self.store.load(module.parts["lora_down"]).reshape(module.rank, d_in)  # (r, in)
            return lora.factored(B, A, s, rows)
        if module.variant == "LoHa":  # hada_w*_b (r, in[, kh, kw]): flattened by lycoris.loha
            w1a, w1b, w2a, w2b = (
                self._load(module, p) for p in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
            )
            return lycoris.loha(w1a, w1b, w2a, w2b, s, rows=rows)
        if module.variant == "LoKr":
            w1, w2 = self._kron_factor(module, "w1"), self._kron_factor(module, "w2")
            ranks = (self._factor_shape(module, "w1")[1], self._factor_shape(module, "w2")[1])
            return lycoris.lokr(w1, w2, s, rows, ranks)
        delta = self._load(module, "diff").reshape(d_out, d_in)  # LyCORIS full: ΔW itself
        return Dense(delta[rows])

    def _kron_factor(self, module: ImageModule, which: str) -> torch.Tensor:
        """LoKr's w1 or w2 in float64, a conv kernel flattened to (rows, in·kh·kw)."""
        if f"lokr_{which}" in module.parts:
            return lycoris.lokr_factor(whole=self.store.load(module.parts[f"lokr_{which}"]))
        a, b = self._load(module, f"lokr_{which}_a"), self._load(module, f"lokr_{which}_b")
        return lycoris.lokr_factor(a=a, b=b)

    # -- Checkpoint ------------------------------------------------------------

    def not_analysed(self) -> list[tuple[str, str]]:
        return list(self._left_out)

    def warnings(self) -> list[str]:
        notes = []
        conv = sorted({r.module for r in self.modules.values() if self.by_name[r.module].conv})
        if conv:
            notes.append(
                f"{len(conv)} conv modules (LoCon): ΔW (out, in, kh, kw) analysed as the matrix "
                f"(out, in·kh·kw): {', '.join(conv[:3])}{' …' if len(conv) > 3 else ''}"
            )
        flat = sorted(
            {r.module for r in self.modules.values() if self.by_name[r.module].dora_guess}
        )
        if flat:
            notes.append(
                f"{len(flat)} DoRA modules keep a flat magnitude vector on a square layer, whose "
                "shape cannot say its axis: read as its writer normalises, dora_scale (kohya, "
                "LyCORIS) over input columns, lora_magnitude_vector (peft, diffusers) over output "
                f"rows: {', '.join(flat[:3])}{' …' if len(flat) > 3 else ''}"
            )
        notes += self.base_warnings()
        if self._left_out:
            notes.append(summarise_not_analysed(self._left_out))
        return notes

    def source_files(self) -> list[Path]:
        base = self.image_base.files() if self.image_base is not None else []
        return [*super().source_files(), *base]

    def details(self) -> dict[str, object]:
        details = {
            "weights": str(self.store.path),
            "layers": {layer: block for block, layer in self.layers.items()},
            **self.dora_details(),
        }
        if self.image_base is not None:
            details["base_weights"] = f"{self.image_base.path}: {self.image_base.describe()}"
        return details
