"""PEFT LoRA adapters: ``adapter_config.json`` + ``adapter_model.safetensors`` (or ``.bin``).

ΔW = s · B @ A per adapted module, kept factored (FORMATS.md §2):

- ``s = lora_alpha / r``, or ``lora_alpha / √r`` with ``use_rslora``;
- ``rank_pattern`` / ``alpha_pattern`` override r and α per module: a key
  matches a module path when ``(.*\\.)?{key}$`` matches it, first key wins
  (PEFT's ``get_pattern_key``);
- ``fan_in_fan_out`` (GPT-2 ``Conv1D``) changes only how PEFT adds ΔW to the
  stored weight: B @ A is already ``(d_out, d_in)``;
- a fused projection (GPT-2 ``c_attn``) keeps its factored form per role by
  slicing the rows of B.

Variants whose ΔW is not s·B@A (DoRA, AdaLoRA, LoHa, LoKr, VeRA, …) are
refused with a ``FormatError`` rather than analysed wrongly.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..delta import Factored, LayerDelta
from ..errors import BaseMismatchError, FormatError
from .base import Checkpoint, CheckpointInfo, ModuleInfo, Selection
from .full import ModelWeights
from .names import ModuleRef, canonical_name, map_modules
from .tensors import TensorStore, open_store

__all__ = ["ADAPTER_FILES", "LoraCheckpoint", "read_adapter_config"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.lora_(?P<factor>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")
# init_lora_weights values that move W0, so that s·B@A is not W_merged − W_original.
_W0_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga", "eva")


def read_adapter_config(folder: Path) -> dict:
    """The parsed ``adapter_config.json`` of an adapter folder."""
    path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except OSError as exc:
        raise FormatError(f"{path}: cannot read the adapter config ({exc})") from exc
    except ValueError as exc:
        raise FormatError(f"{path}: expected a JSON object, found invalid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise FormatError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config


@dataclass(frozen=True)
class _Adapted:
    """One adapted module: its A and B tensor names, rank and scale."""

    module: str
    a_name: str
    b_name: str
    rank: int
    alpha: float
    scale: float
    scale_source: str


def _pattern_value(patterns: dict, module: str) -> tuple[str, object] | None:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return key, value
    return None


class LoraCheckpoint(Checkpoint):
    """A PEFT LoRA or rsLoRA adapter; ``base`` is optional (it adds ``relative_norm``)."""

    format = "peft"

    def __init__(self, path: Path, base: Path | None, config: dict):
        super().__init__(path, base)
        self.config = config
        self.config_path = path / ADAPTER_CONFIG
        self._check_supported()
        self.store = self._open_weights()
        self.adapted = self._read_modules()
        self.modules = map_modules(self.adapted)
        if not self.modules:
            raise FormatError(
                f"{self.store.path}: no attention or MLP projection is adapted; adapted modules: "
                f"{', '.join(sorted(self.adapted)[:10]) or 'none'}. "
                "This architecture is not mapped yet"
            )
        self.base_weights = ModelWeights(base, "--base") if base is not None else None

    # -- reading -----------------------------------------------------------

    def _check_supported(self) -> None:
        peft_type = str(self.config.get("peft_type", "")).upper()
        if peft_type != "LORA":
            raise FormatError(
                f"{self.config_path}: peft_type {self.config.get('peft_type')!r} is not supported "
                "yet; spectra reads peft_type LORA (plain LoRA and rsLoRA)"
            )
        if self.config.get("use_dora"):
            raise FormatError(
                f"{self.config_path}: use_dora is true: DoRA's ΔW depends on the base weight "
                "and its magnitude vector, which spectra does not rebuild yet"
            )
        for field_name in ("r", "lora_alpha"):
            if not isinstance(self.config.get(field_name), int | float):
                raise FormatError(
                    f"{self.config_path}: expected a number in field {field_name!r}, found "
                    f"{self.config.get(field_name)!r}"
                )

    def _open_weights(self) -> TensorStore:
        for name in ADAPTER_FILES:
            if (self.path / name).is_file():
                return open_store(self.path / name)
        raise FormatError(
            f"{self.path}: has {ADAPTER_CONFIG} but no weights; expected one of "
            f"{', '.join(ADAPTER_FILES)}"
        )

    def _read_modules(self) -> dict[str, _Adapted]:
        factors: dict[str, dict[str, str]] = {}
        self.skipped: list[str] = []
        for name in self.store.names():
            match = _LORA_KEY.match(name)
            if match is None:
                self.skipped.append(name)
                continue
            module = canonical_name(match["module"])
            factors.setdefault(module, {})[match["factor"]] = name
        adapted = {}
        for module, pair in factors.items():
            if set(pair) != {"A", "B"}:
                missing = "lora_B" if "A" in pair else "lora_A"
                raise FormatError(
                    f"{self.store.path}: module {module} has no {missing} weight; "
                    "the adapter file is incomplete"
                )
            adapted[module] = self._module_scale(module, pair["A"], pair["B"])
        return adapted

    def _module_scale(self, module: str, a_name: str, b_name: str) -> _Adapted:
        rank, alpha = self.config["r"], self.config["lora_alpha"]
        rank_source, alpha_source = "r", "lora_alpha"
        pattern = _pattern_value(self.config.get("rank_pattern") or {}, module)
        if pattern:
            rank, rank_source = pattern[1], f"rank_pattern[{pattern[0]!r}]"
        pattern = _pattern_value(self.config.get("alpha_pattern") or {}, module)
        if pattern:
            alpha, alpha_source = pattern[1], f"alpha_pattern[{pattern[0]!r}]"
        a_shape = self.store.info(a_name).shape
        b_shape = self.store.info(b_name).shape
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != rank or b_shape[1] != rank:
            raise FormatError(
                f"{self.store.path}: {module} should have lora_A ({rank}, d_in) and lora_B "
                f"(d_out, {rank}) for r={rank} from {self.config_path.name} ({rank_source}); "
                f"found lora_A {a_shape} and lora_B {b_shape}"
            )
        root = "√" if self.config.get("use_rslora") else ""  # rsLoRA: α/√r
        scale = alpha / (math.sqrt(rank) if root else rank)
        source = f"config: {alpha_source}/{root}{rank_source} = {alpha:g}/{root}{rank}"
        return _Adapted(module, a_name, b_name, rank, alpha, scale, source)

    # -- Checkpoint --------------------------------------------------------

    @property
    def variant(self) -> str:
        return "rsLoRA" if self.config.get("use_rslora") else "LoRA"

    def available(self):
        return self.modules.keys()

    def warnings(self) -> list[str]:
        warnings = []
        init = self.config.get("init_lora_weights")
        if isinstance(init, str) and init.lower().startswith(_W0_CHANGING_INITS):
            warnings.append(
                f"init_lora_weights={init!r} changes W0 during initialisation: s·B@A is the "
                "update from the modified W0, not W_merged − W_original"
            )
        others = [name for name in self.skipped if "modules_to_save" in name]
        if others:
            warnings.append(
                f"{len(others)} modules_to_save tensors (full weights, not deltas) skipped"
            )
        unknown = [name for name in self.skipped if "modules_to_save" not in name]
        if unknown:
            warnings.append(
                f"{len(unknown)} tensors that are not lora_A/lora_B skipped: "
                f"{', '.join(unknown[:5])}{' …' if len(unknown) > 5 else ''}"
            )
        return warnings

    def _shape(self, ref: ModuleRef) -> tuple[int, int]:
        adapted = self.adapted[ref.module]
        d_out = self.store.info(adapted.b_name).shape[0]
        rows = ref.rows(d_out)
        return (rows.stop - rows.start, self.store.info(adapted.a_name).shape[1])

    def check(self, selection: Selection) -> None:
        if self.base_weights is None:
            return
        for key in selection.keys:
            base_ref = self.base_weights.modules.get(key)
            shape = self._shape(self.modules[key])
            if base_ref is None or self.base_weights.shape(base_ref) != shape:
                found = "nothing" if base_ref is None else str(self.base_weights.shape(base_ref))
                raise BaseMismatchError(
                    f"{self.base_weights.store.path}: expected a layer {key[0]} {key[1]!r} weight "
                    f"of shape {shape} to match the adapter, found {found}; is --base the "
                    "model this adapter was trained on?"
                )

    def describe(self) -> CheckpointInfo:
        modules = []
        for key in sorted(self.modules):
            ref = self.modules[key]
            adapted = self.adapted[ref.module]
            modules.append(
                ModuleInfo(
                    layer=ref.layer,
                    role=ref.role,
                    name=ref.module,
                    shape=self._shape(ref),
                    dtype=str(self.store.info(adapted.a_name).dtype).removeprefix("torch."),
                    kind="factored",
                    rank=adapted.rank,
                    scale=adapted.scale,
                    scale_source=adapted.scale_source,
                )
            )
        return CheckpointInfo(
            path=str(self.path),
            format=self.format,
            variant=self.variant,
            base=str(self.base) if self.base else None,
            modules=modules,
            warnings=self.warnings(),
            details={
                "weights": str(self.store.path),
                "peft_type": self.config.get("peft_type"),
                "r": self.config.get("r"),
                "lora_alpha": self.config.get("lora_alpha"),
                "use_rslora": bool(self.config.get("use_rslora")),
                "target_modules": self.config.get("target_modules"),
                "base_model_name_or_path": self.config.get("base_model_name_or_path"),
            },
        )

    def _delta(self, key: tuple[int, str]) -> Iterator[LayerDelta]:
        ref = self.modules[key]
        adapted = self.adapted[ref.module]
        A = self.store.load(adapted.a_name)  # (r, d_in)
        B = self.store.load(adapted.b_name)  # (d_out, r), all roles of a fused projection
        B = B[ref.rows(B.shape[0])]  # (d_out of this role, r)
        base_norm = None
        if self.base_weights is not None:
            base = self.base_weights.weight(self.base_weights.modules[key])  # (d_out, d_in)
            base_norm = float(torch.linalg.vector_norm(base))
        yield LayerDelta(
            layer=ref.layer,
            role=ref.role,
            name=ref.module,
            update=Factored(B, A, adapted.scale),
            source_dtype=A.dtype,
            base_norm=base_norm,
        )
