"""kohya and LyCORIS LoRA files of image models (``lora_unet_…``, ``lora_te1_…``; format ``kohya``).

One ``.safetensors`` (or pickled) file, no config. Each key is a module name
with every dot replaced by ``_`` and a prefix naming the model part —
``lora_unet_`` (the UNet or diffusion transformer), ``lora_te_`` /
``lora_te1_`` / ``lora_te2_`` / ``lora_te3_`` (text encoders), ``lycoris_``
(LyCORIS's own wrapper) — then a dot and the part:

The prefix says which model part of the base (``--base``) a module is in:
``lora_unet`` the denoiser, ``lora_te`` / ``lora_te1`` ``text_encoder``,
``lora_te2`` ``text_encoder_2``, ``lora_te3`` the T5 (``text_encoder_3``, or
``text_encoder_2`` in a Flux pipeline). The UNet's names are diffusers' (SD
1.x, LyCORIS on a diffusers UNet) or the original LDM ones (kohya's SDXL:
``lora_unet_input_blocks_4_1_…``), Flux's are Black Forest Labs' (kohya's
Flux: ``lora_unet_double_blocks_0_img_attn_qkv``); the base is searched under
each.

- kohya LoRA / LoCon: ``lora_down.weight`` (r, in[, kh, kw]), ``lora_up.weight``
  (out, r[, 1, 1]), scalar ``alpha``;
- LyCORIS: LoHa ``hada_w1_a/b``, ``hada_w2_a/b`` (``hada_t1/t2`` Tucker), LoKr
  ``lokr_w1`` or ``lokr_w1_a/b``, ``lokr_w2`` or ``lokr_w2_a/b`` (``lokr_t2``),
  full ``diff`` (+ ``diff_b``), DoRA ``dora_scale``, and ``alpha``.

The scale is alpha / r from each module's ``alpha`` tensor; a module without
one (old kohya files) or with alpha 0 has alpha = r, scale 1, as kohya's
``create_network_from_weights`` and LyCORIS read it. ``common.py`` maps and
rebuilds the modules; the file's ``ss_network_*`` metadata (dim, alpha, args,
module) is shown by ``inspect``.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import SpectraError
from ..registry import Format, register
from ..storage import metadata
from ..storage.tensors import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    TensorStore,
    open_store,
    tensor_names,
)
from .common import ImageLoraCheckpoint, ImageModule, safetensors_metadata

__all__ = ["KohyaCheckpoint"]

_KEY = re.compile(
    r"^(?P<module>(?P<prefix>lora_unet|lora_te\d*|lycoris)_(?P<path>[^.]+))\.(?P<part>.+)$"
)
# The model part each prefix names, as a diffusers pipeline folder names it (lora_te3: kohya's
# T5, text_encoder_3 of SD3 and text_encoder_2 of Flux; lycoris_: one model, any part).
COMPONENTS = {
    "lora_unet": "unet",
    "lora_te": "text_encoder",
    "lora_te1": "text_encoder",
    "lora_te2": "text_encoder_2",
    "lora_te3": "text_encoder_3",
    "lycoris": "",
}
NO_MODULE = "not a tensor of a kohya / LyCORIS module (lora_unet_…, lora_te…_, lycoris_…)"
_METADATA = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args")


def _part(raw: str) -> str:
    return raw.removesuffix(".weight")


def claims(path: Path) -> bool:
    """A tensor file whose keys are kohya / LyCORIS module names."""
    if not path.is_file() or path.suffix not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        return False
    try:
        return any(_KEY.match(name) for name in tensor_names(path))
    except SpectraError:
        return False  # not readable: the core detection says why


class KohyaCheckpoint(ImageLoraCheckpoint):
    """A kohya or LyCORIS file; see the module docstring."""

    format = "kohya"

    def __init__(self, path: Path, base: Path | None):
        store = open_store(path)
        modules, left_out = _read_modules(store)
        self.metadata = safetensors_metadata(path)
        super().__init__(path, base, store, list(modules.values()), left_out)

    def details(self) -> dict[str, object]:
        found = {key: self.metadata[key] for key in _METADATA if key in self.metadata}
        return {**super().details(), **found}

    def training(self) -> dict[str, object]:
        return metadata.kohya(self.metadata, self.path)


def _read_modules(store: TensorStore) -> tuple[dict[str, ImageModule], list[tuple[str, str]]]:
    modules: dict[str, ImageModule] = {}
    left_out = []
    for name in store.names():
        match = _KEY.match(name)
        if match is None:
            left_out.append((name, NO_MODULE))
            continue
        module = match["module"]
        if module not in modules:
            prefix = match["prefix"]
            modules[module] = ImageModule(
                module,
                text_encoder=prefix.startswith("lora_te"),
                component=COMPONENTS.get(prefix, "text_encoder"),
                path=match["path"],
            )
        modules[module].parts[_part(match["part"])] = name
    return modules, left_out


def _open(path: Path, base: Path | None, *, base_lookup=None) -> KohyaCheckpoint:
    return KohyaCheckpoint(path, base)  # no base named in the file: base_lookup is not used


register(
    Format(
        name="kohya",
        priority=70,  # after diffusers, whose keys it does not claim
        claims=claims,
        open=_open,
        recognised_by=(
            "a file of lora_unet_… / lora_te…_ / lycoris_… keys (kohya LoRA, LoCon; LyCORIS "
            "LoHa, LoKr, full)"
        ),
    )
)
