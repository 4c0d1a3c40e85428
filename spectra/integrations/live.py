"""The ΔW of a model in memory, while it trains: a live PEFT LoRA, or chosen dense weights.

``LiveModel`` is a ``Checkpoint`` over an ``nn.Module`` instead of files, so
that the selection rules, the σ paths and the report are the library's
own (``Checkpoint.plan``, ``svd.singular_values``,
``analysis.stream.build_report``). Two kinds of ΔW:

- ``"adapter"``: every peft ``LoraLayer`` of the active adapter gives
  ΔW = s·B@A from its ``lora_A`` ``(r, d_in)`` and ``lora_B`` ``(d_out, r)``
  weights and its ``scaling`` (α/r, α/√r with rsLoRA, per-module
  ``rank_pattern`` / ``alpha_pattern``), kept factored: σ from the r×r QR
  core, milliseconds per module. Supported: plain LoRA and rsLoRA on linear
  layers (``nn.Linear``, GPT-2's ``Conv1D`` via ``fan_in_fan_out``, fused
  projections split by role as the loaders split them). Refused with the
  reason: LoRA variants (DoRA, aLoRA, Arrow, …, peft's ``lora_variant``),
  AdaLoRA, and every other peft tuner (LoHa, LoKr, VeRA, IA³, OFT, …); for
  those, save a checkpoint and run ``spectra analyze`` on it.
- ``"dense"``: ΔW = W_now − W_start of the chosen ``nn.Linear`` / ``Conv1D``
  weights, against a float64 CPU copy of only those weights taken when the
  monitor starts (``start_weights``); the difference is taken as
  ``loaders.methods.full.difference`` takes a fine-tune's.

``Monitor`` (``integrations.monitor``) takes these spectra every ``every``
steps of a custom loop and returns flat scalars to log (``integrations.loggers``);
``spectra_of_model`` is one report, now.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch

from ..delta import Dense, LayerDelta
from ..errors import SelectionError, SpectraError
from ..loaders.base import Checkpoint, ModuleInfo, Selection
from ..loaders.methods import lora
from ..loaders.methods.full import difference
from ..loaders.naming.architectures import (
    ModuleRef,
    canonical_name,
    encoder_depth,
    map_with_reasons,
)
from ..loaders.peft.checkpoint import _W0_CHANGING_INITS  # LoRA inits that move W0

__all__ = ["KINDS", "LiveModel"]

KINDS = ("auto", "adapter", "dense")


class LiveModel(Checkpoint):
    """The ΔW of a model in memory, as a ``Checkpoint`` (see the module docstring).

    ``kind`` is ``"adapter"`` (peft LoRA layers), ``"dense"`` (W − ``start``)
    or ``"auto"`` (adapter when the model has peft tuner layers, else dense).
    ``adapter`` names the peft adapter (default: the active one). ``start``
    is what ``start_weights`` returned for a dense model; without it a dense
    model can be planned but not read.
    """

    format = "live"

    def __init__(
        self,
        model: torch.nn.Module,
        kind: str = "auto",
        adapter: str | None = None,
        start: Mapping[str, torch.Tensor] | None = None,
    ):
        if not isinstance(model, torch.nn.Module):
            raise SpectraError(
                f"expected a torch.nn.Module (the model being trained), got {type(model).__name__}"
            )
        if kind not in KINDS:
            raise SpectraError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
        super().__init__(Path(f"live {type(model).__name__}"), None)
        self.model = model
        tuners = _tuner_layers(model)
        self.kind = ("adapter" if tuners else "dense") if kind == "auto" else kind
        self.start = start
        self._left_out: list[tuple[str, str]] = []
        self._notes: list[str] = []
        self.adapter: str | None = None
        if self.kind == "adapter":
            if not tuners:
                raise SpectraError(
                    f"{self.path}: no peft adapter layers in this model; for a full fine-tune "
                    "watch chosen weights with kind='dense'"
                )
            self.adapter = _adapter_name(model, tuners, adapter)
            modules = _lora_modules(tuners, self.adapter)
            self._init_warning(model)
        else:
            modules = {name: module for name, module in model.named_modules() if _is_dense(module)}
        canonical = {canonical_name(name): name for name in modules}
        refs, left_out = map_with_reasons(canonical, encoder_depth(canonical))
        self._left_out += [(canonical[name], why) for name, why in left_out.items()]
        self.refs: dict[tuple[int, str], ModuleRef] = refs
        self.modules = {key: modules[canonical[ref.module]] for key, ref in refs.items()}
        self.names = {key: canonical[ref.module] for key, ref in refs.items()}
        self._base_norms: dict[tuple[int, str], float | None] = {}

    # -- what is there ------------------------------------------------------

    @property
    def variant(self) -> str:
        if self.kind == "dense":
            return "dense (W − W at start)"
        rslora = {_rslora(module, self.adapter) for module in self.modules.values()}
        return f"{'rsLoRA' if rslora == {True} else 'LoRA'} (live peft adapter {self.adapter!r})"

    def available(self) -> Iterable[tuple[int, str]]:
        return self.refs.keys()

    def module_info(self, key: tuple[int, str]) -> ModuleInfo:
        ref, module = self.refs[key], self.modules[key]
        weight = _weight(module, ref)  # (d_out_all, d_in)
        shape = (_rows_count(ref, weight, self._heads()), weight.shape[1])
        if self.kind == "dense":
            return ModuleInfo(key[0], key[1], self.names[key], shape, _dtype(weight), "dense")
        A = module.lora_A[self.adapter].weight
        rule = "lora_alpha/√r" if _rslora(module, self.adapter) else "lora_alpha/r"
        return ModuleInfo(
            key[0],
            key[1],
            self.names[key],
            shape,
            _dtype(A),
            "factored",
            rank=A.shape[0],
            scale=float(module.scaling[self.adapter]),
            scale_source=f"peft LoraLayer.scaling ({rule})",
        )

    def not_analysed(self) -> list[tuple[str, str]]:
        return list(self._left_out)

    def warnings(self) -> list[str]:
        return list(self._notes)

    def source_files(self) -> list[Path]:
        return []  # nothing on disk: a live model is never cached

    def check(self, selection: Selection) -> None:
        if self.kind != "dense" or self.start is None:
            return
        missing = [self.names[key] for key in selection.keys if self.names[key] not in self.start]
        if missing:
            raise SelectionError(
                f"{self.path}: no start weights for {', '.join(missing[:4])}; take them with "
                "start_weights() for the same modules and layers before training"
            )

    # -- reading -----------------------------------------------------------

    def _delta(self, key: tuple[int, str]) -> Iterator[LayerDelta]:
        ref, module = self.refs[key], self.modules[key]
        if self.kind == "dense":
            yield self._dense_delta(key)
            return
        with torch.no_grad():
            A = module.lora_A[self.adapter].weight.detach()  # (r, d_in)
            B = module.lora_B[self.adapter].weight.detach()  # (d_out_all, r)
            rows = ref.rows(B.shape[0], A.shape[1], self._heads())
            yield LayerDelta(
                layer=ref.layer,
                role=ref.role,
                name=self.names[key],
                update=lora.factored(B, A, float(module.scaling[self.adapter]), rows),
                source_dtype=B.dtype,
                base_norm=self._base_norm(key),
            )

    def _dense_delta(self, key: tuple[int, str]) -> LayerDelta:
        if self.start is None:
            raise SpectraError(
                f"{self.path}: a dense ΔW needs the weights at the start: pass "
                "start=start_weights(model, modules, layers), taken before training"
            )
        ref = self.refs[key]
        with torch.no_grad():
            weight = _weight(self.modules[key], ref).detach()  # (d_out_all, d_in), as trained
            rows = ref.rows(*weight.shape, self._heads())
            now = weight[rows].to("cpu")  # (d_out, d_in), in the training dtype
            start = self.start[self.names[key]][rows]  # (d_out, d_in) float64
            delta, now_norm, start_norm = difference(now, start)
        return LayerDelta(
            layer=ref.layer,
            role=ref.role,
            name=self.names[key],
            update=Dense(delta),  # (d_out, d_in) float64
            source_dtype=now.dtype,
            weight_rms=max(start_norm, now_norm) / math.sqrt(now.numel()),  # as loaders.full
            base_norm=start_norm,
        )

    def start_weights(self, selection: Selection) -> dict[str, torch.Tensor]:
        """A float64 CPU copy ``(d_out_all, d_in)`` of each selected module's weight, now."""
        copies = {}
        with torch.no_grad():
            for key in selection.keys:
                weight = _weight(self.modules[key], self.refs[key]).detach()
                copies[self.names[key]] = weight.to("cpu", torch.float64, copy=True)
        return copies

    def _base_norm(self, key: tuple[int, str]) -> float | None:
        """‖W0‖_F of the role's rows (the frozen base layer), once; None if not a float weight."""
        if key not in self._base_norms:
            ref, module = self.refs[key], self.modules[key]
            weight = getattr(module.get_base_layer(), "weight", None)
            norm = None
            if isinstance(weight, torch.Tensor) and weight.is_floating_point():
                with torch.no_grad():
                    W = weight.detach().T if getattr(module, "fan_in_fan_out", False) else weight
                    rows = ref.rows(*W.shape, self._heads())
                    norm = float(torch.linalg.vector_norm(W.detach().double()[rows]))
            self._base_norms[key] = norm
        return self._base_norms[key]

    def _heads(self) -> int | None:
        config = getattr(self.model, "config", None)
        for name in ("num_attention_heads", "n_head", "num_heads"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
        return None

    def _init_warning(self, model: torch.nn.Module) -> None:
        config = getattr(model, "peft_config", {}).get(self.adapter)
        init = getattr(config, "init_lora_weights", None)
        if isinstance(init, str) and init.lower().startswith(_W0_CHANGING_INITS):
            self._notes.append(
                f"init_lora_weights={init!r} changed W0 when the adapter was made: s·B@A is the "
                "update from that modified W0, not W_now − W_original"
            )


# ---------------------------------------------------------------- peft layers


def _tuner_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every peft tuner layer of the model by name; {} when peft is not installed."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def _adapter_name(
    model: torch.nn.Module, tuners: Mapping[str, torch.nn.Module], adapter: str | None
) -> str:
    names = {name for layer in tuners.values() for name in _layer_adapters(layer)}
    if adapter is not None:
        if adapter not in names:
            raise SelectionError(
                f"no adapter {adapter!r} in this model; it has {', '.join(sorted(names))} "
                "(adapter=)"
            )
        return adapter
    active = {a for layer in tuners.values() for a in layer.active_adapters}
    if len(active) != 1:
        raise SelectionError(
            f"the model has {len(active)} active adapters ({', '.join(sorted(active)) or 'none'}) "
            f"among {', '.join(sorted(names))}: name the one to watch with adapter=NAME"
        )
    return active.pop()


def _layer_adapters(layer: torch.nn.Module) -> set[str]:
    found: set[str] = set()
    for attribute in getattr(layer, "adapter_layer_names", ()):
        found.update(getattr(layer, attribute, {}).keys())
    return found


def _lora_modules(
    tuners: Mapping[str, torch.nn.Module], adapter: str
) -> dict[str, torch.nn.Module]:
    """The LoRA layers that carry ``adapter``; anything else carrying it is refused."""
    from peft.tuners.lora import LoraLayer

    modules = {}
    for name, layer in tuners.items():
        if adapter not in _layer_adapters(layer):
            continue
        refusal = _refusal(layer, adapter, LoraLayer)
        if refusal is not None:
            raise SpectraError(
                f"{name}: {refusal}; the live monitor reads plain LoRA and rsLoRA on linear "
                "layers only. Save a checkpoint and run spectra analyze on it, or watch the "
                "merged weights with kind='dense'"
            )
        modules[name] = layer
    return modules


def _refusal(layer: torch.nn.Module, adapter: str, lora_layer: type) -> str | None:
    """Why a peft layer cannot be read live, or None for plain LoRA / rsLoRA on a linear layer."""
    kind = type(layer).__name__
    if not isinstance(layer, lora_layer):
        return f"a peft {kind} layer (not LoRA)"
    if hasattr(layer, "lora_E"):
        return f"an AdaLoRA layer ({kind}), whose ΔW = B·diag(E)·A is not read live"
    variant = getattr(layer, "lora_variant", {}).get(adapter)
    if variant is not None or getattr(layer, "use_dora", {}).get(adapter):
        name = type(variant).__name__ if variant is not None else "DoRA"
        return f"a LoRA variant ({name}) whose ΔW is not s·B@A"
    lora_a = dict(layer.lora_A.items()).get(adapter)  # (an nn.ModuleDict has no .get)
    if not isinstance(lora_a, torch.nn.Linear):
        return f"a LoRA layer on a {type(layer.get_base_layer()).__name__}, not a linear layer"
    return None


# ---------------------------------------------------------------- weights


def _rslora(layer: torch.nn.Module, adapter: str | None) -> bool:
    return bool(getattr(layer, "use_rslora", {}).get(adapter))


def _is_dense(module: torch.nn.Module) -> bool:
    """An ``nn.Linear``, or a GPT-2 style ``Conv1D`` (weight stored ``(d_in, d_out)``)."""
    if isinstance(module, torch.nn.Linear):
        return True
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.ndim == 2
    )


def _weight(module: torch.nn.Module, ref: ModuleRef) -> torch.Tensor:
    """The module's weight ``(d_out_all, d_in)`` (the base layer's for a LoRA layer)."""
    if hasattr(module, "get_base_layer"):
        base = module.get_base_layer()
        weight = base.weight
        return weight.T if getattr(module, "fan_in_fan_out", False) else weight
    weight = module.weight
    return weight.T if ref.conv1d or type(module).__name__ == "Conv1D" else weight


def _rows_count(ref: ModuleRef, weight: torch.Tensor, heads: int | None) -> int:
    rows = ref.rows(*weight.shape, heads)
    return len(range(*rows.indices(weight.shape[0]))) if isinstance(rows, slice) else len(rows)


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")
