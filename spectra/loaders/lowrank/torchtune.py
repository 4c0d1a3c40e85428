"""torchtune LoRA / DoRA adapters in torchtune's own layout (``adapter_model.pt``).

Facts from torchtune's code (``modules/peft/lora.py``, ``dora.py``,
``models/convert_weights.py``, ``training/checkpointing/_checkpointer.py``,
the LoRA recipes):

- every checkpointer saves the adapter as ``torch.save`` of its state dict,
  ``adapter_model.pt`` (``adapter_N.pt`` in older releases), with native keys:
  ``layers.{i}.attn.{q,k,v,output}_proj.lora_{a,b}.weight`` and
  ``layers.{i}.mlp.w{1,2,3}.lora_{a,b}.weight`` (w1 = gate, w2 = down, w3 =
  up), ``output.lora_*`` for the LM head, ``….magnitude`` for DoRA;
- ``LoRALinear`` holds ``lora_a`` ``(r, d_in)`` and ``lora_b`` ``(d_out, r)``
  and scales by ``alpha / rank``; ``DoRALinear`` adds ``magnitude (d_out,)``
  and applies ``diag(m / ‖W0 + s·B@A‖_row)(W0 + s·B@A)``;
- the Hugging Face checkpointer also writes ``adapter_config.json``
  (``r``, ``lora_alpha``, ``peft_type: LORA``, target modules in HF names,
  ``base_model_name_or_path``), copies the base's ``config.json`` beside, and
  saves a PEFT export ``adapter_model.safetensors`` whose q/k ``lora_B`` rows
  ``tune_to_peft_adapter_weights`` has put in Hugging Face's order. The other
  checkpointers write no config: α then comes from ``lora_alpha=``
  (``--lora-alpha``), as it is in the recipe's config;
- torchtune's ``hf_to_tune`` permutes LLaMA-family q and k weights into Meta's
  interleaved RoPE order (Qwen2 and Phi-3 have converters of their own that
  do not), so the native q/k ``lora_b`` rows are in that order: spectra puts
  them back in Hugging Face's order with the head counts of the base's
  ``config.json`` (``common.py``), unless that config names a model type
  torchtune does not permute.

A folder holding ``adapter_model.pt`` is read here even when the PEFT export
lies beside it: the export's config does not say ``use_dora``, so a DoRA
adapter is only recognised from the native file's ``magnitude`` tensors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ...arguments import DIRECTIONAL_ONLY, LORA_ALPHA
from ...errors import FormatError
from ..methods import lora
from ..naming.architectures import NO_LAYER, ModuleRef, canonical_name, layer_index
from ..registry import Format, register
from ..storage import metadata
from ..storage.tensors import PICKLE_SUFFIXES, TensorStore, open_store, tensor_names
from .common import LoraFileCheckpoint, LowRankModule

__all__ = ["TorchtuneCheckpoint"]

NATIVE_FILE = "adapter_model.pt"
_CONFIG = "adapter_config.json"
_NATIVE = re.compile(r"(?:^|\.)layers\.\d+\.(?:attn|mlp)\.\w+\.(?:lora_[ab]\.weight|magnitude)$")
_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_a\.weight|lora_b\.weight|magnitude)$")
_MODULE = re.compile(
    r"^(?:model\.)?layers\.(?P<layer>\d+)\.(?:attn\.(?P<attn>q|k|v|output)_proj|mlp\.(?P<mlp>w[123]))$"
)
_ROLES = {"q": "q", "k": "k", "v": "v", "output": "o", "w1": "gate", "w2": "down", "w3": "up"}
# model_type values (config.json) whose torchtune converter keeps Hugging Face's q/k row order.
_HF_ORDER = ("qwen2", "qwen3", "phi3", "phi4")
_NOT_DECODER = "not a module of torchtune's decoder layers (layers.N.attn / layers.N.mlp)"
_NOT_LORA = "not a tensor of a torchtune LoRA layer (lora_a, lora_b, magnitude)"


def _native_file(path: Path) -> Path | None:
    if path.is_dir():
        path = path / NATIVE_FILE
    ok = path.is_file() and path.suffix in PICKLE_SUFFIXES and path.name.startswith("adapter")
    return path if ok else None


def claims(path: Path) -> bool:
    """``adapter_model.pt`` (or a folder holding it) whose keys are torchtune's native ones."""
    native = _native_file(path)
    if native is None:
        return False
    try:
        names = tensor_names(native)
    except FormatError:
        return False
    return any(_NATIVE.search(name) for name in names)


def _model_type(folder: Path | None) -> str | None:
    if folder is None:
        return None
    try:
        config = json.loads(
            ((folder if folder.is_dir() else folder.parent) / "config.json").read_text()
        )
    except (OSError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None


class TorchtuneCheckpoint(LoraFileCheckpoint):
    """A torchtune adapter: ``adapter_model.pt`` with native keys (see the module docstring)."""

    format = "torchtune"
    method = "LoRA (torchtune)"
    order_note = "torchtune keeps Meta's q/k row order"

    def __init__(
        self,
        path: Path,
        base: Path | None,
        *,
        base_lookup=None,
        lora_alpha: float | None = None,
        directional_only: bool = False,
    ):
        super().__init__(path, base)
        native = _native_file(path)
        if native is None:
            raise FormatError(f"{path}: expected torchtune's {NATIVE_FILE}, found none")
        self.store: TensorStore = open_store(native)
        folder = native.parent
        self.config_path = folder / _CONFIG if (folder / _CONFIG).is_file() else None
        self.config = self._read_config()
        self.alpha, self.alpha_source = self._alpha(lora_alpha)
        self.model_type = _model_type(base) or _model_type(folder)
        self.lora, self.left_out = self._read_modules()
        self._notes: list[str] = []
        if base is None and self.dora and not directional_only:
            base = self._base_from_config(base_lookup)
        named = self.config.get("base_model_name_or_path")
        self.base_hint = (
            f" (the config's base_model_name_or_path {named!r} is not found locally)"
            if named
            else ""
        )
        self.finish(base, directional_only=directional_only, heads_from=folder)

    def _read_config(self) -> dict:
        if self.config_path is None:
            return {}
        try:
            config = json.loads(self.config_path.read_text())
        except (OSError, ValueError) as exc:
            raise FormatError(f"{self.config_path}: expected a JSON object ({exc})") from exc
        return config if isinstance(config, dict) else {}

    def _alpha(self, lora_alpha: float | None) -> tuple[float, str]:
        if lora_alpha is not None:
            return float(lora_alpha), f"given ({LORA_ALPHA(f'{lora_alpha:g}')}): lora_alpha"
        alpha = self.config.get("lora_alpha")
        if isinstance(alpha, int | float) and not isinstance(alpha, bool):
            return float(alpha), f"{_CONFIG}: lora_alpha"
        where = (
            f"{self.config_path} has no number for lora_alpha (found {alpha!r})"
            if self.config_path is not None
            else f"no {_CONFIG} lies beside it (torchtune's Hugging Face checkpointer writes one; "
            "its other checkpointers do not)"
        )
        raise FormatError(
            f"{self.store.path}: torchtune's LoRA scale is lora_alpha / r, and {where}: pass "
            f"{LORA_ALPHA('ALPHA')}, the lora_alpha of the recipe's config"
        )

    def _read_modules(self) -> tuple[dict[str, LowRankModule], list[tuple[str, str]]]:
        parts: dict[str, dict[str, str]] = {}
        left_out = []
        for name in self.store.names():
            match = _KEY.match(canonical_name(name))
            if match is None:
                left_out.append((name, _NOT_LORA))
            else:
                parts.setdefault(match["module"], {})[match["part"].split(".")[0]] = name
        lora = {}
        for module, found in parts.items():
            match = _MODULE.match(module)
            if match is None:
                reason = NO_LAYER if layer_index(module) is None else _NOT_DECODER
                left_out += [(name, reason) for name in found.values()]
                continue
            role = _ROLES[match["attn"] or match["mlp"]]
            ref = ModuleRef(int(match["layer"]), role, module, "torchtune")
            lora[module] = self._module(ref, found)
        return lora, left_out

    def _module(self, ref: ModuleRef, parts: dict[str, str]) -> LowRankModule:
        if "lora_a" not in parts or "lora_b" not in parts:
            raise FormatError(
                f"{self.store.path}: {ref.module} should have lora_a.weight and lora_b.weight; "
                f"found {', '.join(sorted(parts))}"
            )
        a, b = (self.store.info(parts[p]).shape for p in ("lora_a", "lora_b"))
        rank = self.config.get("r", a[0] if len(a) == 2 else -1)
        if len(a) != 2 or len(b) != 2 or a[0] != rank or b[1] != rank:
            source = f" from {_CONFIG} (r)" if "r" in self.config else ""
            raise FormatError(
                f"{self.store.path}: {ref.module} should have lora_a.weight ({rank}, d_in) and "
                f"lora_b.weight (d_out, {rank}) for rank {rank}{source}; found lora_a {a} and "
                f"lora_b {b}"
            )
        interleaved = ref.role in ("q", "k") and self.model_type not in _HF_ORDER
        return LowRankModule.of(
            ref=ref,
            a=parts["lora_a"],
            b=parts["lora_b"],
            rank=rank,
            shape=(b[0], a[1]),
            scale=lora.scale(rank, self.alpha),
            scale_source=f"{self.alpha_source}/r = {self.alpha:g}/{rank}",
            magnitude=parts.get("magnitude"),
            interleaved=interleaved,
        )

    def _base_from_config(self, base_lookup) -> Path | None:
        name = self.config.get("base_model_name_or_path")
        found = base_lookup(name) if base_lookup is not None and name else None
        if found is not None:
            where = "" if str(found) == name else f", at {found}"
            self._notes.append(f"base model found from base_model_name_or_path {name!r}{where}")
        return found

    def warnings(self) -> list[str]:
        return self._notes + super().warnings()

    def details(self) -> dict[str, object]:
        details = {"weights": str(self.store.path), "lora_alpha": self.alpha}
        if self.config_path is not None:
            details["config"] = str(self.config_path)
        details["model_type"] = self.model_type
        export = self.store.path.parent / "adapter_model.safetensors"
        if export.is_file():
            details["peft_export"] = f"{export.name} (the same adapter in PEFT's layout; not read)"
        return details

    def training(self) -> dict[str, object]:
        return metadata.torchtune(self.store.path.parent)


def open_torchtune(path: Path, base: Path | None, **options) -> TorchtuneCheckpoint:
    return TorchtuneCheckpoint(path, base, **options)


FORMAT = register(
    Format(
        name="torchtune",
        priority=50,  # before peft: its PEFT export may lie beside
        claims=claims,
        open=open_torchtune,
        options=(LORA_ALPHA, DIRECTIONAL_ONLY),
        recognised_by=(
            "adapter_model.pt (or a folder holding it) with torchtune's native keys "
            "layers.N.attn.*_proj.lora_a.weight / layers.N.mlp.w1-3.lora_a.weight"
        ),
    )
)
