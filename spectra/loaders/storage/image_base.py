"""The base model of an image-model adapter (``--base``): W0 of each adapted module, by its name.

kohya, LyCORIS and diffusers LoRA files name the modules of a UNet, a
diffusion transformer or a text encoder; the base may name the same weight
in another scheme (``naming/diffusion.py`` translates them). ``ImageBase``
opens a base whatever its layout and indexes each of its weights under every
name an adapter may give it:

- a diffusers pipeline folder: components ``unet/``, ``transformer/``,
  ``prior/`` (the denoiser), ``text_encoder/``, ``text_encoder_2/``,
  ``text_encoder_3/``, each with ``diffusion_pytorch_model.safetensors`` or
  ``model.safetensors`` (sharded with its ``.index.json``, or ``.bin``; a
  variant such as ``….fp16.safetensors`` when it is the only file); or one
  component folder of such a pipeline (its ``config.json`` names its class);
- a single-file SD 1.x / 2.x / SDXL checkpoint: the UNet under
  ``model.diffusion_model.`` in LDM names (also indexed under diffusers'
  names), the text encoders under ``cond_stage_model.`` or
  ``conditioner.embedders.N.`` (transformers' CLIP names, or OpenCLIP's whose
  fused ``in_proj_weight`` gives q, k and v their thirds of the rows);
- a single-file Flux checkpoint in Black Forest Labs' names, with or without
  ``model.diffusion_model.`` (the fused ``qkv`` and ``linear1`` rows also
  indexed as diffusers' ``to_q`` … ``proj_mlp``); a diffusers Flux folder is
  indexed under BFL's fused names too, its ``to_q``, ``to_k``, ``to_v`` stacked.

A module's W0 is a ``BaseModule``: rows of one or more base tensors, stacked
in order. Names are compared with every ``.`` read as ``_`` (kohya's keys),
and a text encoder's leading ``text_model.`` is dropped (transformers 5 saves
``CLIPTextModel`` without it). Tensors are read one module at a time.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ...arguments import Argument
from ...errors import FormatError
from ..naming.diffusion import (
    FLUX_DOUBLE,
    FLUX_SINGLE,
    OPEN_CLIP,
    diffusers_unet_to_ldm,
    ldm_unet_to_diffusers,
)
from .tensors import TensorStore, open_store

__all__ = ["DENOISERS", "BaseModule", "ImageBase"]

DENOISERS = ("unet", "transformer", "prior")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
_FILES = tuple(  # a component folder's weights, in order of preference
    f"{stem}{suffix}"
    for stem in ("diffusion_pytorch_model", "model", "pytorch_model")
    for suffix in (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json")
)
# Single files: (prefix, component, scheme); the denoiser's scheme is read from its names.
_SINGLE_FILE = (
    ("model.diffusion_model.", "", ""),
    ("cond_stage_model.transformer.", "text_encoder", "clip"),
    ("cond_stage_model.model.", "text_encoder", "open_clip"),  # SD 2.x
    ("conditioner.embedders.0.transformer.", "text_encoder", "clip"),  # SDXL
    ("conditioner.embedders.1.model.", "text_encoder_2", "open_clip"),  # SDXL
    ("conditioner.embedders.0.model.", "text_encoder_2", "open_clip"),  # SDXL refiner
    ("text_encoders.clip_l.transformer.", "text_encoder", "clip"),
    ("text_encoders.clip_g.transformer.", "text_encoder_2", "clip"),
    ("text_encoders.t5xxl.transformer.", "text_encoder_3", "clip"),
)
_UNPREFIXED = re.compile(
    r"^(?:(?P<bfl>double_blocks|single_blocks)|(?P<unet>down_blocks|mid_block|up_blocks)"
    r"|(?P<dit>transformer_blocks|single_transformer_blocks))\."
)
_RESBLOCK = re.compile(
    r"^transformer\.resblocks\.(\d+)\.(attn\.in_proj|attn\.out_proj|mlp\.c_fc|mlp\.c_proj)$"
)
_DOUBLE = re.compile(r"^double_blocks\.(\d+)\.(.+)$")
_SINGLE = re.compile(r"^single_blocks\.(\d+)\.(.+)$")
_BLOCK = re.compile(r"^(single_transformer_blocks|transformer_blocks)\.(\d+)\.")


@dataclass(frozen=True)
class Segment:
    """Rows ``start:stop`` of one base tensor (its full name in the store); None: to the end."""

    tensor: str
    start: int = 0
    stop: int | None = None

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class BaseModule:
    """W0 of one adapted module: rows of one or more tensors of one component, stacked."""

    component: str
    segments: tuple[Segment, ...]

    @property
    def tensors(self) -> str:
        """The base tensor(s) it is read from, for messages."""
        return " + ".join(dict.fromkeys(s.tensor for s in self.segments))


@dataclass
class _Part:
    """One component of the base: its tensors (those starting with ``prefix``) and their scheme."""

    store: TensorStore
    prefix: str
    scheme: str  # unet, ldm_unet, transformer, bfl, clip, open_clip, plain
    layers_per_block: int | None = None


def _key(component: str, module: str) -> str:
    """How a module name is compared: dots as ``_``; a text encoder's ``text_model_`` dropped."""
    key = module.replace(".", "_")
    return key.removeprefix("text_model_") if component in TEXT_ENCODERS else key


class ImageBase:
    """A base model for an image-model adapter (module docstring); ``flag`` names it in errors."""

    def __init__(self, path: Path, flag: Argument | str):
        self.path, self.flag = path, flag
        self.parts: dict[str, _Part] = {}
        self.configs: list[Path] = []
        if path.is_dir():
            self._open_folder(path)
        elif path.is_file():
            self._open_file(path)
        else:
            raise FormatError(f"{path}: no such file or folder ({flag})")
        self.entries: dict[tuple[str, str], BaseModule] = {}
        for component, part in self.parts.items():
            self._index(component, part)

    # -- opening ---------------------------------------------------------------

    def _expected(self, found: str) -> FormatError:
        return FormatError(
            f"{self.path}: expected the base of an image-model adapter: a diffusers pipeline "
            f"folder (unet/ or transformer/, text_encoder/ …), one of its component folders, or a "
            f"single-file SD 1.x / SDXL checkpoint (model.diffusion_model.input_blocks…) or Flux "
            f"checkpoint (double_blocks.N…); found {found} ({self.flag})"
        )

    def _open_folder(self, path: Path) -> None:
        for component in (*DENOISERS, *TEXT_ENCODERS):
            if (path / component).is_dir():
                self._open_component(path / component, component)
        if not self.parts:
            component = self._component_of(path)
            if component is None:
                found = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
                raise self._expected(found)
            self._open_component(path, component)

    def _component_of(self, folder: Path) -> str | None:
        """A component folder given alone: which one its config.json's class says it is."""
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            return None
        name = str(config.get("_class_name") or config.get("architectures") or "")
        if "UNet" in name:
            return "unet"
        if "Transformer" in name:
            return "transformer"
        if "T5" in name:
            return "text_encoder_3"  # kohya's lora_te3; text_encoder_2 of a Flux pipeline
        return "text_encoder" if "CLIP" in name else None

    def _open_component(self, folder: Path, component: str) -> None:
        weights = next((folder / n for n in _FILES if (folder / n).is_file()), None)
        if weights is None:  # a variant (….fp16.safetensors), sharded or not, if it is the only one
            variants = sorted(folder.glob("*.safetensors.index.json"))
            variants = variants or sorted(folder.glob("*.safetensors"))
            if len(variants) != 1:
                found = ", ".join(v.name for v in variants) or "no weights file"
                raise FormatError(
                    f"{folder}: expected one weights file ({_FILES[0]}, {_FILES[4]}, sharded or "
                    f"not); found {found} ({self.flag})"
                )
            weights = variants[0]
        scheme = {"unet": "unet", "transformer": "transformer"}.get(component, "plain")
        scheme = "clip" if component in TEXT_ENCODERS else scheme
        part = _Part(open_store(weights), "", scheme)
        config = folder / "config.json"
        if config.is_file():
            self.configs.append(config)
        if scheme == "unet":
            part.layers_per_block = _layers_per_block(part.store.names(), config)
        self.parts[component] = part

    def _open_file(self, path: Path) -> None:
        store = open_store(path)
        names = store.names()
        for prefix, component, scheme in _SINGLE_FILE:
            if not any(n.startswith(prefix) for n in names):
                continue
            if not component:  # the denoiser: LDM UNet or BFL Flux
                inner = [n[len(prefix) :] for n in names if n.startswith(prefix)]
                flux = any(_UNPREFIXED.match(n) and n.startswith("double_") for n in inner)
                component, scheme = ("transformer", "bfl") if flux else ("unet", "ldm_unet")
            self.parts.setdefault(component, _Part(store, prefix, scheme))
        found = next((m.lastgroup for n in names if (m := _UNPREFIXED.match(n))), None)
        if not self.parts and found is not None:  # a denoiser's file alone, BFL or diffusers names
            scheme = {"bfl": "bfl", "unet": "unet", "dit": "transformer"}[found]
            self.parts["unet" if scheme == "unet" else "transformer"] = _Part(store, "", scheme)
        if not self.parts:
            raise self._expected(f"the keys {', '.join(names[:4])}{' …' if len(names) > 4 else ''}")
        unet = self.parts.get("unet")
        if unet is not None:
            names = [n[len(unet.prefix) :] for n in names if n.startswith(unet.prefix)]
            unet.layers_per_block = _layers_per_block(names, None)

    # -- the index -----------------------------------------------------------

    def _add(self, component: str, module: str, segments: tuple[Segment, ...]) -> None:
        self.entries.setdefault(
            (component, _key(component, module)), BaseModule(component, segments)
        )

    def _index(self, component: str, part: _Part) -> None:
        names = {n[len(part.prefix) :]: n for n in part.store.names() if n.startswith(part.prefix)}
        weights = {
            n.removesuffix(".weight"): full for n, full in names.items() if n.endswith(".weight")
        }
        for module, tensor in weights.items():
            self._add(component, module, (Segment(tensor),))
        lpb = part.layers_per_block
        if part.scheme in ("unet", "ldm_unet") and lpb is not None:
            convert = diffusers_unet_to_ldm if part.scheme == "unet" else ldm_unet_to_diffusers
            for module, tensor in weights.items():
                other = convert(module, lpb)
                if other is not None:
                    self._add(component, other, (Segment(tensor),))
        elif part.scheme == "bfl":
            self._index_bfl(component, part, weights)
        elif part.scheme == "transformer":
            self._index_fused_flux(component, weights)
        elif part.scheme == "open_clip":
            self._index_open_clip(component, part, names)

    def _split(
        self, component: str, tensor: str, names: tuple[str, ...], prefix: str, single: bool
    ):
        """Index each of ``names`` under its rows of the fused ``tensor``."""
        d_out, d_in = self._shape_2d(tensor)
        if len(names) == 1:
            bounds = [(0, d_out)]
        elif single:  # Flux linear1: q, k, v of d_in rows each, then the MLP's
            bounds = [(0, d_in), (d_in, 2 * d_in), (2 * d_in, 3 * d_in), (3 * d_in, d_out)]
        else:  # thirds
            third = d_out // 3
            bounds = [(0, third), (third, 2 * third), (2 * third, d_out)]
        for name, (start, stop) in zip(names, bounds, strict=True):
            self._add(component, f"{prefix}{name}", (Segment(tensor, start, stop),))

    def _index_bfl(self, component: str, part: _Part, weights: dict[str, str]) -> None:
        for module, tensor in weights.items():
            for pattern, table, block, single in (
                (_DOUBLE, FLUX_DOUBLE, "transformer_blocks", False),
                (_SINGLE, FLUX_SINGLE, "single_transformer_blocks", True),
            ):
                match = pattern.match(module)
                if match and match[2] in table:
                    prefix = f"{block}.{match[1]}."
                    self._split(component, tensor, table[match[2]], prefix, single)

    def _index_fused_flux(self, component: str, weights: dict[str, str]) -> None:
        blocks = {(m[1], m[2]) for module in weights if (m := _BLOCK.match(module))}
        for kind, index in blocks:
            table = FLUX_DOUBLE if kind == "transformer_blocks" else FLUX_SINGLE
            bfl = "double_blocks" if kind == "transformer_blocks" else "single_blocks"
            for fused, names in table.items():
                tensors = [weights.get(f"{kind}.{index}.{name}") for name in names]
                if all(tensors):
                    segments = tuple(Segment(t) for t in tensors)
                    self._add(component, f"{bfl}.{index}.{fused}", segments)

    def _index_open_clip(self, component: str, part: _Part, names: dict[str, str]) -> None:
        for module, tensor in names.items():
            stem = module.removesuffix(".weight").removesuffix("_weight")
            match = _RESBLOCK.match(stem)
            if match and module.endswith("weight"):
                prefix = f"encoder.layers.{match[1]}."
                self._split(component, tensor, OPEN_CLIP[match[2]], prefix, False)

    # -- lookups -------------------------------------------------------------

    def components_for(self, component: str) -> list[str]:
        """The base's components an adapter's component may be (a T5 is text_encoder_2 in Flux).

        ``unet``, ``transformer`` and ``prior`` are the base's denoiser,
        whichever it has; ``""`` (a file of one model's modules) any part.
        """
        if not component:
            wanted = (*DENOISERS, *TEXT_ENCODERS)
        elif component in DENOISERS:
            wanted = DENOISERS
        elif component == "text_encoder_3":
            wanted = ("text_encoder_3", "text_encoder_2")
        else:
            wanted = (component,)
        return [c for c in wanted if c in self.parts]

    def find(self, component: str, module: str) -> BaseModule | None:
        """W0 of an adapter's module (its path inside ``component``, dots or ``_``), or None."""
        for candidate in self.components_for(component):
            found = self.entries.get((candidate, _key(candidate, module)))
            if found is not None:
                return found
        return None

    def _shape_2d(self, tensor: str) -> tuple[int, int]:
        shape = self._store_of(tensor).info(tensor).shape
        if len(shape) < 2:
            raise FormatError(f"{self.path}: {tensor} should be a weight matrix; has shape {shape}")
        return shape[0], math.prod(shape[1:])

    def _store_of(self, tensor: str) -> TensorStore:
        return next(p.store for p in self.parts.values() if tensor in p.store)

    def shape(self, module: BaseModule) -> tuple[int, int]:
        """(d_out, d_in) of W0 (a conv kernel flattened), from the headers only."""
        rows, widths = 0, set()
        for segment in module.segments:
            d_out, d_in = self._shape_2d(segment.tensor)
            rows += len(range(*segment.rows.indices(d_out)))
            widths.add(d_in)
        if len(widths) != 1:
            raise FormatError(
                f"{self.path}: {module.tensors} should share one input width to be stacked; found "
                f"{sorted(widths)}"
            )
        return rows, widths.pop()

    def weight(self, module: BaseModule) -> torch.Tensor:
        """W0 ``(d_out, d_in)`` in float64, a new tensor (the rows of each segment, stacked)."""
        pieces = []
        for segment in module.segments:
            tensor = self._store_of(segment.tensor).load(segment.tensor)
            if not tensor.dtype.is_floating_point:
                raise FormatError(
                    f"{self.path}: {segment.tensor} has dtype {tensor.dtype}; spectra reads "
                    "floating-point weights only (dequantise the checkpoint first)"
                )
            flat = tensor.reshape(tensor.shape[0], -1)[segment.rows]  # (rows, d_in)
            pieces.append(flat.to(dtype=torch.float64, copy=True))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)  # (d_out, d_in)

    def dtype(self, module: BaseModule) -> torch.dtype:
        segment = module.segments[0]
        return self._store_of(segment.tensor).info(segment.tensor).dtype

    def files(self) -> list[Path]:
        """Every file the base is read from: weights, shard indexes, components' config.json."""
        files = [f for part in self.parts.values() for f in part.store.files()]
        return list(dict.fromkeys([*files, *self.configs]))

    def describe(self) -> str:
        """What the base holds, in a line: ``unet (LDM names), text_encoder (CLIP)``."""
        names = {
            "unet": "diffusers names",
            "ldm_unet": "LDM names",
            "transformer": "diffusers names",
            "bfl": "Black Forest Labs' names",
            "clip": "transformers' names",
            "open_clip": "OpenCLIP names",
            "plain": "as stored",
        }
        return ", ".join(f"{c} ({names[p.scheme]})" for c, p in self.parts.items())


def _layers_per_block(names: list[str], config: Path | None) -> int | None:
    """n of a UNet: its config's ``layers_per_block``, else read from its names.

    diffusers names: down block 0 holds resnets 0 … n-1; LDM names: the first
    down-sampler is ``input_blocks.{n+1}.0.op`` (one down block: no
    down-sampler, its last input block is n).
    """
    try:
        value = json.loads(config.read_text()).get("layers_per_block") if config else None
    except (OSError, ValueError, AttributeError):
        value = None
    if isinstance(value, int):
        return value
    resnets = [int(m[1]) for n in names if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", n))]
    if resnets:
        return max(resnets) + 1
    ops = [int(m[1]) for n in names if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", n))]
    if ops:
        return min(ops) - 1
    blocks = [int(m[1]) for n in names if (m := re.match(r"input_blocks\.(\d+)\.", n))]
    return max(blocks) if blocks else None
