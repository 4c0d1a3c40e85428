"""diffusers LoRA files (``pytorch_lora_weights.safetensors``; format ``diffusers``).

What ``save_lora_weights`` of a diffusers pipeline writes: one file (in a
folder, or given itself) whose keys carry the model part as a prefix —
``unet.``, ``transformer.``, ``prior.``, ``text_encoder.``, ``text_encoder_2.``,
``text_encoder_3.`` — then the module path with its dots and peft's parts:
``….to_k.lora_A.weight`` (r, in), ``….to_k.lora_B.weight`` (out, r). Older
files use attention processors (``….attn1.processor.to_k_lora.down.weight``,
``up``), ``….lora.down/up.weight`` or ``….lora_linear_layer.down/up.weight``,
sometimes a scalar ``….alpha``.

The scale of each module, first found wins: its ``alpha`` tensor (alpha / r);
the LoraConfig that diffusers ≥ 0.34 stores as JSON in the safetensors
metadata key ``lora_adapter_metadata`` (keys ``unet.r``, ``unet.lora_alpha``,
… per model part, or unprefixed from a model's ``save_lora_adapter``), read
as peft reads it (``rank_pattern`` / ``alpha_pattern``, ``use_rslora``);
otherwise lora_alpha = r, scale 1, which is what diffusers assumes when it
loads such a file — said in the warnings. ``common.py`` maps and rebuilds
the modules. With a base (``--base``) the prefix names the model part a
module's W0 is in (``unet.``, ``transformer.``, ``prior.``: the base's
denoiser; ``text_encoder_2.``: its ``text_encoder_2``; none: any part), and
the rest of the name, in diffusers' names, is found in a pipeline folder or
in a single file's LDM / BFL names (``bases.py``); peft's DoRA
(``lora_magnitude_vector`` ``(d_out,)``) is rebuilt against it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ...errors import FormatError, SpectraError
from ..methods import lora
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

__all__ = ["DiffusersCheckpoint"]

WEIGHT_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
METADATA_KEY = "lora_adapter_metadata"
_ADAPTER_CONFIG = "adapter_config.json"  # a PEFT folder, not diffusers'
_COMPONENT = re.compile(r"^(?P<component>unet|transformer|prior|text_encoder(?:_\d)?)\.")
_PEFT = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_magnitude_vector)"
    r"(?:\.(?P<adapter>[\w-]+)(?=\.(?:weight|bias)$))?(?:\.(?P<what>weight|bias))?$"
)
_PROCESSOR = re.compile(
    r"^(?P<module>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out|add_q_proj|add_k_proj|"
    r"add_v_proj|to_add_out)_lora\.(?P<dir>down|up)\.weight$"
)
_LINEAR_LAYER = re.compile(
    r"^(?P<module>.+)\.(?:lora|lora_linear_layer)\.(?P<dir>down|up)\.weight$"
)
_ALPHA = re.compile(r"^(?P<module>.+)\.alpha$")
_PARTS = {"lora_A": "lora_down", "lora_B": "lora_up", "down": "lora_down", "up": "lora_up"}
NO_MODULE = (
    "not a diffusers LoRA tensor (lora_A, lora_B, alpha, or the older …_lora.down/up, "
    "lora.down/up, lora_linear_layer.down/up)"
)


def _weights(path: Path) -> Path | None:
    if path.is_dir():
        if (path / _ADAPTER_CONFIG).is_file():
            return None
        return next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
    return path if path.suffix in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES else None


def _parse(name: str) -> tuple[str, str, str | None] | None:
    """(module, part, adapter name) of a diffusers LoRA tensor name, or None."""
    match = _PEFT.match(name)
    if match is not None:
        part = _PARTS.get(match["part"], match["part"])
        if match["what"] == "bias":
            part += ".bias"
        return match["module"], part, match["adapter"]
    match = _PROCESSOR.match(name)
    if match is not None:
        proj = "to_out.0" if match["proj"] == "to_out" else match["proj"]
        return f"{match['module']}.{proj}", _PARTS[match["dir"]], None
    match = _LINEAR_LAYER.match(name)
    if match is not None:
        return match["module"], _PARTS[match["dir"]], None
    match = _ALPHA.match(name)
    if match is not None:
        return match["module"], "alpha", None
    return None


def claims(path: Path) -> bool:
    """A diffusers LoRA folder or file (see the module docstring)."""
    weights = _weights(path)
    if weights is None:
        return False
    if weights.name in WEIGHT_FILES:
        return True
    if METADATA_KEY in safetensors_metadata(weights):
        return True
    try:
        names = tensor_names(weights)
    except SpectraError:
        return False  # not readable: the core detection says why
    return any(
        (_COMPONENT.match(name) and _parse(name)) or _PROCESSOR.match(name) for name in names
    )


class DiffusersCheckpoint(ImageLoraCheckpoint):
    """A diffusers LoRA file; see the module docstring."""

    format = "diffusers"

    def __init__(self, path: Path, base: Path | None):
        weights = _weights(path)
        if weights is None:
            raise FormatError(f"{path}: expected a diffusers LoRA file, e.g. {WEIGHT_FILES[0]}")
        store = open_store(weights)
        self.metadata = self._read_metadata(weights)
        self.component_of: dict[str, str] = {}
        modules, left_out = self._read_modules(store)
        self._unscaled: list[str] = []
        super().__init__(path, base, store, list(modules.values()), left_out)

    def _read_metadata(self, weights: Path) -> dict | None:
        raw = safetensors_metadata(weights).get(METADATA_KEY)
        if raw is None:
            return None
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise FormatError(
                f"{weights}: the {METADATA_KEY} metadata should be JSON (a LoraConfig); {exc}"
            ) from exc
        if not isinstance(config, dict):
            raise FormatError(
                f"{weights}: the {METADATA_KEY} metadata should be a JSON object (a LoraConfig); "
                f"found {type(config).__name__}"
            )
        return config

    def _read_modules(
        self, store: TensorStore
    ) -> tuple[dict[str, ImageModule], list[tuple[str, str]]]:
        modules: dict[str, ImageModule] = {}
        left_out = []
        adapters = set()
        for name in store.names():
            parsed = _parse(name)
            if parsed is None:
                left_out.append((name, NO_MODULE))
                continue
            module, part, adapter = parsed
            adapters.add(adapter)
            match = _COMPONENT.match(module)
            component = match["component"] if match else ""
            self.component_of[module] = component
            if module not in modules:
                path = module[len(component) + 1 :] if component else module
                text_encoder = component.startswith("text")
                modules[module] = ImageModule(
                    module, text_encoder=text_encoder, component=component, path=path
                )
            modules[module].parts[part] = name
        if len(adapters - {None}) > 1:
            raise FormatError(
                f"{store.path}: holds several adapters ({', '.join(sorted(adapters - {None}))}); "
                "spectra reads a file of one"
            )
        return modules, left_out

    def _config(self, component: str) -> dict | None:
        """The LoraConfig fields of one model part from the metadata, or None."""
        if self.metadata is None:
            return None
        prefix = f"{component}."
        found = {k[len(prefix) :]: v for k, v in self.metadata.items() if k.startswith(prefix)}
        if found:
            return found
        return self.metadata if "r" in self.metadata else None

    def scale_of(self, module: ImageModule) -> tuple[float, str]:
        if "alpha" in module.parts:
            return super().scale_of(module)
        component = self.component_of[module.module]
        config = self._config(component)
        if config is None:
            self._unscaled.append(module.module)
            return 1.0, f"no alpha, no {METADATA_KEY}: lora_alpha = r, scale 1"
        path = module.module[len(component) + 1 :] if component else module.module
        where = f"{METADATA_KEY} {component + '.' if component else ''}"
        rank, alpha, rank_source, alpha_source = lora.rank_and_alpha(
            config, path, "lora_alpha", str(self.store.path), field_prefix=where
        )
        if rank != module.rank:
            raise FormatError(
                f"{self.store.path}: {module.module}: {where}{rank_source} says r = {rank}, but "
                f"its lora_A has {module.rank} rows"
            )
        rslora = bool(config.get("use_rslora"))
        source = lora.scale_text(rank, alpha, rank_source, alpha_source, rslora)
        return lora.scale(rank, alpha, rslora), f"{where}{source}"

    def warnings(self) -> list[str]:
        notes = super().warnings()
        if self._unscaled:
            notes.insert(
                0,
                f"{len(self._unscaled)} modules have neither an alpha tensor nor a LoraConfig in "
                f"the {METADATA_KEY} metadata: scale 1 (lora_alpha = r), as diffusers assumes "
                "when it loads this file; norms are off by lora_alpha/r if training used "
                "another alpha (balance metrics do not depend on it)",
            )
        return notes

    def details(self) -> dict[str, object]:
        details = super().details()
        if self.metadata is None:
            details[METADATA_KEY] = "none"
            return details
        for component in sorted(set(self.component_of.values())):
            config = self._config(component) or {}
            fields = ("r", "lora_alpha", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern")
            shown = {k: config[k] for k in fields if config.get(k) not in (None, {}, False)}
            details[f"{METADATA_KEY} {component or '(unprefixed)'}"] = shown
        return details

    def training(self) -> dict[str, object]:
        return metadata.diffusers(self.metadata or {}, self.store.path)


def _open(path: Path, base: Path | None, *, base_lookup=None) -> DiffusersCheckpoint:
    return DiffusersCheckpoint(path, base)


register(
    Format(
        name="diffusers",
        priority=90,  # before kohya: both are single safetensors files of LoRA keys
        claims=claims,
        open=_open,
        recognised_by=(
            "pytorch_lora_weights.safetensors (or a folder holding it), or a file of unet. / "
            "transformer. / text_encoder. keys with lora_A / lora_B"
        ),
    )
)
