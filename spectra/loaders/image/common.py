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

LyCORIS DoRA (``dora_scale``) needs the base weight W0, which spectra does
not read for these files: a selection that holds such a module is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ...arguments import BASE, LAYERS, MODULES
from ...delta import Dense
from ...errors import FormatError
from ..adapter import AdaptedModule, AdapterCheckpoint, Rows, Update
from ..base import Selection, summarise_not_analysed
from ..methods import lora, lycoris
from ..naming.architectures import ModuleRef
from ..naming.diffusion import match_roles, natural_key, reason_for
from ..storage.tensors import TensorStore

__all__ = ["METHOD_PARTS", "ImageLoraCheckpoint", "ImageModule", "safetensors_metadata"]

# The parts each method's ΔW is rebuilt from ("alpha" and "dora_scale" are read by all).
METHOD_PARTS = {
    "LoRA": ("lora_down", "lora_up", "lora_mid"),  # lora_mid: Tucker LoCon (conv only)
    "LoHa": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "LoKr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
    "full": ("diff",),
}
_DORA_PARTS = ("dora_scale", "lora_magnitude_vector")  # LyCORIS's, peft's
_SHARED_PARTS = ("alpha", *_DORA_PARTS)
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


class ImageLoraCheckpoint(AdapterCheckpoint):
    """The modules of a kohya / LyCORIS / diffusers file, mapped and rebuilt (module docstring)."""

    def __init__(
        self,
        path: Path,
        base: Path | None,
        store: TensorStore,
        modules: list[ImageModule],
        left_out: list[tuple[str, str]],
    ):
        if base is not None:
            raise FormatError(
                f"{base}: spectra reads no base model for {self.format} LoRA files yet (their "
                f"module names are not those of the base checkpoint); run without {BASE} "
                "(relative_norm needs it and is left out)"
            )
        super().__init__(path, None)
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

    # -- AdapterCheckpoint ---------------------------------------------------

    @property
    def variant(self) -> str:
        methods = {}
        for ref in self.modules.values():
            module = self.by_name[ref.module]
            name = "LoCon" if module.variant == "LoRA" and module.conv else module.variant
            methods[name if name != "full" else "LyCORIS full"] = None
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
            "kind": "factored" if module.variant == "LoRA" else "dense",
            "rank": module.rank,
            "scale": module.scale,
            "scale_source": module.scale_source,
            "heads": None,
        }

    def check(self, selection: Selection) -> None:
        dora = [self.modules[key].module for key in selection.keys]
        dora = [
            name
            for name in dict.fromkeys(dora)
            if any(part in self.by_name[name].parts for part in _DORA_PARTS)
        ]
        if dora:
            more = f" and {len(dora) - 1} more" if len(dora) > 1 else ""
            raise FormatError(
                f"{self.store.path}: {dora[0]}{more} carry a DoRA magnitude (dora_scale, "
                "lora_magnitude_vector): their ΔW = diag(m/‖W0 + s·ΔW‖)(W0 + s·ΔW) − W0 "
                f"needs the base weight W0, which spectra does not read for {self.format} files "
                f"yet; select modules without it ({MODULES}, {LAYERS})"
            )
        super().check(selection)

    def _load(self, module: ImageModule, part: str) -> torch.Tensor:
        return self.store.load(module.parts[part]).double()

    def updates(
        self, ref: ModuleRef, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        module = self.by_name[ref.module]
        d_out, d_in = module.shape
        s = module.scale
        if module.variant == "LoRA":  # a conv kernel flattened: (r, in, kh, kw) → (r, in·kh·kw)
            B = self.store.load(module.parts["lora_up"]).reshape(d_out, module.rank)  # (out, r)
            A = self.store.load(module.parts["lora_down"]).reshape(module.rank, d_in)  # (r, in)
            return [(None, lora.factored(B, A, s, rows))]
        if module.variant == "LoHa":  # hada_w*_b (r, in[, kh, kw]): flattened by lycoris.loha
            w1a, w1b, w2a, w2b = (
                self._load(module, p) for p in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
            )
            return [(None, lycoris.loha(w1a, w1b, w2a, w2b, s, rows=rows))]
        if module.variant == "LoKr":
            w1, w2 = self._kron_factor(module, "w1"), self._kron_factor(module, "w2")
            ranks = (self._factor_shape(module, "w1")[1], self._factor_shape(module, "w2")[1])
            return [(None, lycoris.lokr(w1, w2, s, rows, ranks))]
        delta = self._load(module, "diff").reshape(d_out, d_in)  # LyCORIS full: ΔW itself
        return [(None, Dense(delta[rows]))]

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
        if self._left_out:
            notes.append(summarise_not_analysed(self._left_out))
        return notes

    def details(self) -> dict[str, object]:
        return {
            "weights": str(self.store.path),
            "layers": {layer: block for block, layer in self.layers.items()},
        }
