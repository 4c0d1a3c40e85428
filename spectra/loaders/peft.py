"""PEFT adapters: ``adapter_config.json`` + ``adapter_model.safetensors`` (or ``.bin``).

Each ``peft_type`` has a variant that knows its tensors and rebuilds ΔW as
the method defines it (FORMATS.md §2, checked against peft's own merge):

| variant | ΔW |
|---|---|
| LoRA / rsLoRA | ``s · B @ A``, ``s = α/r`` or ``α/√r`` (factored) |
| DoRA | ``diag(m / ‖V‖_row) · V − W0`` with ``V = W0 + s·B@A`` (dense; needs the base) |
| multi-head (HydraLoRA) | per head ``s · B_j @ A``; mixture ``s · mean_j(B_j) @ A`` (factored) |
| AdaLoRA | ``B @ (A ⊙ E) · α / (init_r + 1e-5)`` (factored; pruned ranks are zero rows) |
| LoHa | ``(w1a @ w1b) ⊙ (w2a @ w2b) · α/r`` (dense) |
| LoKr | ``kron(w1, w2) · α/r``, each factor whole or ``_a @ _b`` (dense) |
| VeRA | ``diag(λ_b) B diag(λ_d) A``, shared ``A`` sliced to d_in (from the base) (factored) |

``rank_pattern`` / ``alpha_pattern`` override r and α per module: a key
matches a module path when ``(.*\\.)?{key}$`` matches it, first key wins
(PEFT's ``get_pattern_key``). ``fan_in_fan_out`` changes only how PEFT adds
ΔW to a Conv1D weight: ``B @ A`` is already ``(d_out, d_in)``. A fused
projection keeps its form per role by selecting rows of B (or of dense ΔW).
Every product and sum of adapter tensors is taken in float64, whatever the
dtype they were saved in.

Keys may carry the adapter name (``lora_A.default.weight``); a file holding
several adapters is read only with ``adapter=NAME`` (``--adapter``), which
otherwise names a sub-folder adapter. ``lora_bias=True`` saves a
``lora_B.bias``: it adds a constant, not part of ΔW, and is listed by
``not_analysed()`` with that reason, as are multi-head routers, tensors of
adapters not selected, ``modules_to_save`` weights and modules the
architecture map does not know. Multi-head heads ``lora_B0…`` must be those
the config's ``lora_nums`` names.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..delta import Dense, Factored
from ..errors import FormatError, MissingBaseError
from ..hub import resolve_cached
from .adapter import AdapterCheckpoint, Rows, Update
from .base import Selection, summarise_not_analysed
from .full import find_model_file
from .names import NO_DEPTH, ModuleRef, canonical_name, map_with_reasons
from .tensors import TensorStore, open_store

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FILES",
    "PEFT_TYPES",
    "PeftCheckpoint",
    "adapter_folder",
    "read_adapter_config",
    "resolve_base",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_PARTS = (
    r"lora_A|lora_B\d*|lora_E|lora_magnitude_vector|lora_route"
    r"|hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t2|vera_lambda_[bd]"
)
_KEY = re.compile(rf"^(?P<module>.+)\.(?P<part>{_PARTS})(?:\.(?P<adapter>[A-Za-z0-9_-]+))?$")
_BIAS = re.compile(r"^lora_B\d*$")  # lora_bias=True: lora_B is an nn.Linear with a bias
_SHARED_VERA = re.compile(
    r"^(?:base_model\.)?vera_(?P<which>[AB])(?:\.(?P<adapter>[A-Za-z0-9_-]+))?$"
)
# Why a tensor of the file is not part of any analysed ΔW (see not_analysed()).
LORA_BIAS = "bias of lora_B: adds a constant, not part of ΔW's spectrum"
SAVED_MODULE = "modules_to_save: a full weight of the tuned module, not a delta"
UNKNOWN_PART = "not a tensor of any adapter part spectra knows"
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


def sub_adapters(folder: Path) -> list[str]:
    """Names of the adapters PEFT saved in sub-folders (non-default adapters)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / ADAPTER_CONFIG).is_file())


def adapter_folder(path: Path, adapter: str | None) -> Path:
    """The folder of the adapter to read: ``path/NAME`` for a sub-folder adapter, else ``path``.

    An ``adapter`` that names no sub-folder is looked for inside the top-level
    adapter file (several adapters saved with their names in one file).
    """
    names = sub_adapters(path)
    top_level = (path / ADAPTER_CONFIG).is_file()
    if adapter is not None and adapter in names:
        return path / adapter
    if top_level:
        return path
    if adapter is not None:
        raise FormatError(
            f"{path}: no adapter named {adapter!r}; sub-folder adapters here: "
            f"{', '.join(names) or 'none'} (--adapter)"
        )
    raise FormatError(
        f"{path}: holds several adapters in sub-folders ({', '.join(names)}); "
        "choose one with --adapter NAME"
    )


def resolve_base(name: object) -> Path | None:
    """A local folder for ``base_model_name_or_path``: the path itself, or its cached snapshot.

    Only the local Hub cache is read (``hub.resolve_cached``): an analysis never
    downloads a base model it was not asked for.
    """
    if not isinstance(name, str) or not name:
        return None
    path = Path(name).expanduser()
    if not path.is_dir():
        path = resolve_cached(name)
    if path is not None and path.is_dir() and find_model_file(path) is not None:
        return path
    return None


def _pattern_value(patterns: object, module: str) -> tuple[str, object] | None:
    for key, value in (patterns or {}).items() if isinstance(patterns, dict) else ():
        if re.match(rf"(.*\.)?({key})$", module):
            return key, value
    return None


@dataclass(frozen=True)
class _Key:
    """One tensor name of an adapter file, parsed: its module, part and adapter name."""

    name: str
    module: str  # canonical module path; "" for VeRA's shared vera_A / vera_B
    part: str  # lora_A, lora_B0, vera_A, …
    adapter: str | None  # the adapter name kept in the key, if any
    bias: bool = False  # a lora_B bias (lora_bias=True)


def _parse_key(name: str) -> _Key | None:
    """Parse an adapter tensor name; ``None`` for a tensor of no known part."""
    bias = name.endswith(".bias")
    stem = name.removesuffix(".bias") if bias else name.removesuffix(".weight")
    match = _KEY.match(stem)
    if match is not None and (not bias or _BIAS.match(match["part"])):
        return _Key(name, canonical_name(match["module"]), match["part"], match["adapter"], bias)
    match = _SHARED_VERA.match(stem) if not bias else None
    if match is not None:
        return _Key(name, "", f"vera_{match['which']}", match["adapter"])
    return None


@dataclass
class _Adapted:
    """One adapted module: its tensor names by part, and (once known) rank and scale."""

    module: str
    parts: dict[str, str] = field(default_factory=dict)
    rank: int = 0
    scale: float = 1.0
    scale_source: str = ""
    heads: int | None = None

    def scale_by(
        self, rank: int, alpha: float, rank_source: str, alpha_source: str, root: bool = False
    ) -> None:
        """Set rank and the scale α/r (α/√r with ``root``), saying where each came from."""
        sign = "√" if root else ""
        self.rank = rank
        self.scale = alpha / (math.sqrt(rank) if root else rank)
        self.scale_source = f"config: {alpha_source}/{sign}{rank_source} = {alpha:g}/{sign}{rank}"


class PeftCheckpoint(AdapterCheckpoint):
    """A PEFT adapter of any supported ``peft_type``; see the module docstring."""

    format = "peft"

    def __init__(
        self,
        path: Path,
        base: Path | None,
        *,
        adapter: str | None = None,
        per_head: bool = False,
        directional_only: bool = False,
    ):
        folder = adapter_folder(path, adapter)
        super().__init__(folder, base)
        self.adapter_name = adapter
        self.from_sub_folder = folder != path
        self.config = read_adapter_config(folder)
        self.config_path = folder / ADAPTER_CONFIG
        self.per_head = per_head
        self.directional_only = directional_only
        self.peft_type = str(self.config.get("peft_type", "")).upper()
        self._notes: list[str] = []
        self.rebuild = self._variant()
        self.store = self._open_weights()
        self._left_out: list[tuple[str, str]] = []  # (tensor, reason): see not_analysed()
        self.adapted, self.shared, self.skipped = self._read_modules()
        self._map_modules(encoder_layers=None)
        if base is None:
            base = self._found_base()
        self.open_base(base)
        if self.base_weights is not None and self.base_weights.encoder_layers is not None:
            self._map_modules(self.base_weights.encoder_layers)  # T5 decoder blocks (names.py)
        if not self.modules:
            raise FormatError(
                f"{self.store.path}: no attention or MLP projection is adapted; adapted modules: "
                f"{', '.join(sorted(self.adapted)[:10]) or 'none'}. "
                f"{summarise_not_analysed(self.not_analysed())}"
            )
        for adapted in self.adapted.values():
            if adapted.module in self.mapped:
                self.rebuild.resolve_scale(self, adapted)

    # -- reading -----------------------------------------------------------

    def _variant(self) -> _Variant:
        variant = _VARIANTS.get(self.peft_type)
        if variant is None:
            raise FormatError(
                f"{self.config_path}: peft_type {self.config.get('peft_type')!r} is not supported; "
                f"spectra reads {', '.join(sorted(_VARIANTS))}"
            )
        return variant

    def _open_weights(self) -> TensorStore:
        for name in ADAPTER_FILES:
            if (self.path / name).is_file():
                return open_store(self.path / name)
        raise FormatError(
            f"{self.path}: has {ADAPTER_CONFIG} but no weights; expected one of "
            f"{', '.join(ADAPTER_FILES)}"
        )

    def _read_modules(self) -> tuple[dict[str, _Adapted], dict[str, str], list[str]]:
        """The selected adapter's modules and shared tensors, and the names of no known part.

        Tensors of other adapters in the file and lora_B biases are recorded in
        ``_left_out`` with their reason.
        """
        keys, skipped = [], []
        for name in self.store.names():
            key = _parse_key(name)
            if key is None:
                skipped.append(name)
            else:
                keys.append(key)
        chosen = self._choose_adapter({key.adapter for key in keys})
        adapted: dict[str, _Adapted] = {}
        shared: dict[str, str] = {}
        for key in keys:
            if key.adapter != chosen:
                other = key.adapter or "default"
                reason = f"adapter {other!r} of the same file, not selected (--adapter {other})"
                self._left_out.append((key.name, reason))
            elif key.bias:
                self._left_out.append((key.name, LORA_BIAS))
            elif not key.module:
                shared[key.part] = key.name
            else:
                adapted.setdefault(key.module, _Adapted(key.module)).parts[key.part] = key.name
        return adapted, shared, skipped

    def _choose_adapter(self, found: set[str | None]) -> str | None:
        """Which adapter name of the file to read (``--adapter``); unnamed keys are ``None``."""
        requested = self.adapter_name
        listing = ", ".join(sorted(name or "(unnamed)" for name in found))
        if requested is None or self.from_sub_folder:
            if len(found) > 1:
                raise FormatError(
                    f"{self.store.path}: holds several adapters in one file ({listing}); "
                    "choose one with --adapter NAME"
                )
            return next(iter(found), None)
        if requested in found:
            return requested
        if requested == "default" and found <= {None}:
            return None
        raise FormatError(
            f"{self.store.path}: no adapter named {requested!r}; adapters in this file: "
            f"{listing or 'none'}; sub-folder adapters: "
            f"{', '.join(sub_adapters(self.path)) or 'none'} (--adapter)"
        )

    def _map_modules(self, encoder_layers: int | None) -> None:
        """Map the adapted modules to (layer, role); the others get their reason."""
        self.modules, self.unmapped = map_with_reasons(self.adapted, encoder_layers)
        self.mapped = {ref.module for ref in self.modules.values()}

    def _found_base(self) -> Path | None:
        heads_needed = any(ref.needs_heads for ref in self.modules.values())
        depth_needed = NO_DEPTH in self.unmapped.values()
        if not (self.rebuild.needs_base(self) or heads_needed or depth_needed):
            return None
        name = self.config.get("base_model_name_or_path")
        found = resolve_base(name)
        if found is not None:
            self._notes.append(f"base model found from base_model_name_or_path {name!r}: {found}")
        return found

    def _require(self, adapted: _Adapted, parts: tuple[str, ...]) -> None:
        missing = [part for part in parts if part not in adapted.parts]
        if missing:
            raise FormatError(
                f"{self.store.path}: module {adapted.module} has no {', '.join(missing)} "
                f"tensor, which {self.peft_type} needs; the adapter file is incomplete"
            )

    def need(self, adapted: _Adapted, *parts: str) -> list[torch.Tensor]:
        """Load the named parts of a module, with a clear error for a missing one."""
        self._require(adapted, parts)
        return [self.store.load(adapted.parts[part]) for part in parts]

    def shape_of(self, adapted: _Adapted, part: str) -> tuple[int, ...]:
        """The shape of one part of a module, from the header."""
        self._require(adapted, (part,))
        return self.store.info(adapted.parts[part]).shape

    def rank_and_alpha(self, module: str, alpha_field: str) -> tuple[int, float, str, str]:
        """r and α of a module from the config and its patterns, with where each came from."""
        rank, alpha = self.config.get("r"), self.config.get(alpha_field)
        rank_source, alpha_source = "r", alpha_field
        pattern = _pattern_value(self.config.get("rank_pattern"), module)
        if pattern:
            rank, rank_source = pattern[1], f"rank_pattern[{pattern[0]!r}]"
        pattern = _pattern_value(self.config.get("alpha_pattern"), module)
        if pattern:
            alpha, alpha_source = pattern[1], f"alpha_pattern[{pattern[0]!r}]"
        for value, source in ((rank, rank_source), (alpha, alpha_source)):
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise FormatError(
                    f"{self.config_path}: expected a number for {source}, found {value!r}"
                )
        return int(rank), float(alpha), rank_source, alpha_source

    # -- Checkpoint --------------------------------------------------------

    @property
    def variant(self) -> str:
        return self.rebuild.name(self)

    def available(self):
        return self.modules.keys()

    def warnings(self) -> list[str]:
        warnings = list(self._notes)
        init = self.config.get("init_lora_weights")
        if isinstance(init, str) and init.lower().startswith(_W0_CHANGING_INITS):
            warnings.append(
                f"init_lora_weights={init!r} changes W0 when the adapter is created: the "
                "rebuilt ΔW is the update from that modified W0, not W_merged − W_original"
            )
        saved = self._modules_to_save()
        if saved:
            warnings.append(
                f"{len(saved)} modules_to_save tensors (full weights, not deltas) skipped: "
                f"{', '.join(saved[:4])}{' …' if len(saved) > 4 else ''}"
            )
        others = [(name, why) for name, why in self.not_analysed() if why != SAVED_MODULE]
        if others:
            warnings.append(summarise_not_analysed(others))
        warnings += self.rebuild.warnings(self)
        return warnings

    def not_analysed(self) -> list[tuple[str, str]]:
        """Every tensor of the file that no analysed ΔW uses, with the reason (nothing vanishes)."""
        saved = set(self._modules_to_save())
        left_out = [(n, SAVED_MODULE if n in saved else UNKNOWN_PART) for n in self.skipped]
        left_out += self._left_out
        for module, adapted in self.adapted.items():
            if module not in self.mapped:
                reason = self.unmapped.get(module, "not in the architecture map")
                left_out += [(name, reason) for name in adapted.parts.values()]
                continue
            used = self.rebuild.parts_used(self, adapted)
            left_out += [
                (name, self.rebuild.unused_reason(self, part))
                for part, name in adapted.parts.items()
                if part not in used
            ]
        return left_out

    def _modules_to_save(self) -> list[str]:
        names = self.config.get("modules_to_save") or []
        return sorted(
            tensor
            for tensor in self.skipped
            if any(re.search(rf"(?:^|\.){re.escape(n)}\.", canonical_name(tensor)) for n in names)
        )

    def module_shape(self, ref: ModuleRef) -> tuple[int, int]:
        return self.rebuild.module_shape(self, self.adapted[ref.module])

    def module_dtype(self, ref: ModuleRef) -> torch.dtype:
        return self.store.info(next(iter(self.adapted[ref.module].parts.values()))).dtype

    def shape_before_base(self, ref: ModuleRef) -> tuple[int, int | None]:
        return self.rebuild.shape_before_base(self, self.adapted[ref.module])

    def updates(self, ref: ModuleRef, rows: Rows, base: torch.Tensor | None):
        return self.rebuild.updates(self, self.adapted[ref.module], rows, base)

    def check(self, selection: Selection) -> None:
        if self.rebuild.needs_base(self) and self.base_weights is None:
            name = self.config.get("base_model_name_or_path")
            raise MissingBaseError(
                f"{self.config_path}: {self.rebuild.why_base} The config's "
                f"base_model_name_or_path is {name!r}, which is neither a local model folder nor "
                f"in the local Hugging Face cache: pass --base DIR{self.rebuild.base_hint}"
            )
        super().check(selection)

    def factors(self, ref: ModuleRef) -> dict[str, object]:
        adapted = self.adapted[ref.module]
        return {
            "kind": self.rebuild.kind(self),
            "rank": adapted.rank,
            "scale": adapted.scale,
            "scale_source": adapted.scale_source,
            "heads": adapted.heads,
        }

    def details(self) -> dict[str, object]:
        details = {"weights": str(self.store.path), "peft_type": self.config.get("peft_type")}
        details |= {k: self.config[k] for k in self.rebuild.config_fields if k in self.config}
        details |= {
            "target_modules": self.config.get("target_modules"),
            "base_model_name_or_path": self.config.get("base_model_name_or_path"),
        }
        if self.config.get("modules_to_save"):
            details["modules_to_save"] = self._modules_to_save()
        adapters = sub_adapters(self.path)
        if adapters:
            details["other_adapters"] = adapters
        return details


# ---------------------------------------------------------------- variants


class _Variant:
    """How one ``peft_type`` names its tensors and rebuilds ΔW."""

    why_base = ""
    base_hint = ""  # another way out than --base, if there is one
    parts: tuple[str, ...] = ()  # the module parts ΔW is rebuilt from
    config_fields: tuple[str, ...] = ("r", "alpha", "rank_pattern", "alpha_pattern")

    def name(self, ckpt: PeftCheckpoint) -> str:
        raise NotImplementedError

    def kind(self, ckpt: PeftCheckpoint) -> str:
        return "factored"

    def needs_base(self, ckpt: PeftCheckpoint) -> bool:
        return False

    def warnings(self, ckpt: PeftCheckpoint) -> list[str]:
        return []

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: _Adapted) -> None:
        """Fill in rank and scale (with their source), checking shapes against the config."""
        raise NotImplementedError

    def parts_used(self, ckpt: PeftCheckpoint, adapted: _Adapted) -> set[str]:
        """The parts of a module that its ΔW is rebuilt from."""
        return set(adapted.parts) & set(self.parts)

    def unused_reason(self, ckpt: PeftCheckpoint, part: str) -> str:
        """Why a part of a module is not used by this variant's ΔW."""
        return f"{part} is not a part of a {ckpt.peft_type} adapter's ΔW"

    def module_shape(self, ckpt: PeftCheckpoint, adapted: _Adapted) -> tuple[int, int]:
        """(d_out, d_in) of the whole adapted module."""
        raise NotImplementedError

    def shape_before_base(self, ckpt: PeftCheckpoint, adapted: _Adapted) -> tuple[int, int | None]:
        """What ``describe()`` shows when the shape needs the base (``None``: not known)."""
        return self.module_shape(ckpt, adapted)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: _Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        raise NotImplementedError


class _Lora(_Variant):
    """LoRA, rsLoRA, DoRA and multi-head LoRA (HydraLoRA / R-LoRA: ``lora_B{j}``)."""

    why_base = "DoRA's ΔW = diag(m/‖W0 + s·B@A‖_row)(W0 + s·B@A) − W0 needs the base weight W0."
    base_hint = " (or --directional-only for DoRA's s·B@A alone)"
    config_fields = (
        "r",
        "lora_alpha",
        "use_rslora",
        "use_dora",
        "lora_nums",
        "fan_in_fan_out",
        "rank_pattern",
        "alpha_pattern",
        "init_lora_weights",
    )

    def name(self, ckpt):
        if self._heads(ckpt):
            return "multi-head LoRA (" + ("per head" if ckpt.per_head else "uniform mixture") + ")"
        base = "rsLoRA" if ckpt.config.get("use_rslora") else "LoRA"
        if ckpt.config.get("use_dora"):
            return f"DoRA ({base}{', directional part only' if ckpt.directional_only else ''})"
        return base

    def _heads(self, ckpt) -> int | None:
        heads = ckpt.config.get("lora_nums")
        return heads if isinstance(heads, int) and heads > 0 else None

    def kind(self, ckpt):
        dora = ckpt.config.get("use_dora") and not ckpt.directional_only
        return "dense" if dora else "factored"

    def needs_base(self, ckpt):
        return bool(ckpt.config.get("use_dora")) and not ckpt.directional_only

    def warnings(self, ckpt):
        notes = []
        if ckpt.config.get("use_dora") and ckpt.directional_only:
            notes.append(
                "DoRA analysed as its directional part s·B@A only (--directional-only): the "
                "magnitude vector is ignored, so this is not the update DoRA applies"
            )
        if self._heads(ckpt):
            notes.append(
                "multi-head LoRA: its ΔW depends on the input through the router; "
                + (
                    "each head's s·B_j@A is reported"
                    if ckpt.per_head
                    else "the uniform mixture s·mean_j(B_j)@A is reported (--per-head: each)"
                )
                + ". The scale follows the config's use_rslora; R-LoRA's α/√r is not recorded "
                "on disk"
            )
        return notes

    def _b_parts(self, ckpt, adapted) -> list[str]:
        heads = self._heads(ckpt)
        if heads:
            return [f"lora_B{j}" for j in range(heads)]
        return ["lora_B"]

    def parts_used(self, ckpt, adapted):
        used = {"lora_A", *self._b_parts(ckpt, adapted)}
        if ckpt.config.get("use_dora") and not ckpt.directional_only:
            used.add("lora_magnitude_vector")
        return used

    def unused_reason(self, ckpt, part):
        if part == "lora_route":
            return (
                "router of a multi-head LoRA: weights the heads per input, not part of a static "
                "ΔW (each head or their uniform mixture is analysed)"
            )
        if part == "lora_magnitude_vector" and ckpt.directional_only:
            return "DoRA's magnitude vector, ignored with --directional-only"
        return super().unused_reason(ckpt, part)

    def _check_heads(self, ckpt, adapted) -> None:
        """The lora_B heads in the file must be those the config's lora_nums names."""
        found = sorted(int(part[6:]) for part in adapted.parts if re.fullmatch(r"lora_B\d+", part))
        heads = self._heads(ckpt)
        if not found and heads is None:
            return  # a plain LoRA: a missing lora_B is reported as an incomplete file
        if found == list(range(heads or 0)) and (heads is None) == ("lora_B" in adapted.parts):
            return
        in_file = ", ".join(f"lora_B{j}" for j in found) or "none"
        plain = " and a plain lora_B" if heads is not None and "lora_B" in adapted.parts else ""
        raise FormatError(
            f"{ckpt.store.path}: {adapted.module} has heads {in_file}{plain}, but "
            f"{ckpt.config_path.name} says lora_nums = {ckpt.config.get('lora_nums')!r} "
            f"({'lora_B0 … lora_B' + str(heads - 1) if heads else 'one lora_B'} expected); "
            "the config and the tensors disagree: fix lora_nums in the config"
        )

    def resolve_scale(self, ckpt, adapted):
        self._check_heads(ckpt, adapted)
        rank, alpha, rank_source, alpha_source = ckpt.rank_and_alpha(adapted.module, "lora_alpha")
        a_shape = ckpt.shape_of(adapted, "lora_A")
        b_shapes = [ckpt.shape_of(adapted, part) for part in self._b_parts(ckpt, adapted)]
        if (
            len(a_shape) != 2
            or a_shape[0] != rank
            or any(len(b) != 2 or b[1] != rank for b in b_shapes)
        ):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have lora_A ({rank}, d_in) and "
                f"lora_B (d_out, {rank}) for r={rank} from {ckpt.config_path.name} "
                f"({rank_source}); found lora_A {a_shape} and lora_B {b_shapes[0]}"
            )
        rslora = bool(ckpt.config.get("use_rslora"))  # rsLoRA: α/√r
        adapted.scale_by(rank, alpha, rank_source, alpha_source, root=rslora)
        adapted.heads = self._heads(ckpt)

    def module_shape(self, ckpt, adapted):
        return (
            ckpt.shape_of(adapted, self._b_parts(ckpt, adapted)[0])[0],
            ckpt.shape_of(adapted, "lora_A")[1],
        )

    def updates(self, ckpt, adapted, rows, base):
        (A,) = ckpt.need(adapted, "lora_A")  # (r, d_in)
        Bs = ckpt.need(adapted, *self._b_parts(ckpt, adapted))  # each (d_out_all, r)
        s = adapted.scale
        if self._heads(ckpt):
            if ckpt.per_head:
                return [(j, Factored(B[rows], A, s)) for j, B in enumerate(Bs)]
            mixture = torch.stack([B.double() for B in Bs]).mean(0)  # (d_out_all, r)
            return [(None, Factored(mixture[rows], A, s))]
        (B,) = Bs
        if not ckpt.config.get("use_dora") or ckpt.directional_only:
            return [(None, Factored(B[rows], A, s))]
        (magnitude,) = ckpt.need(adapted, "lora_magnitude_vector")  # (d_out_all,)
        V = base + s * (B.double() @ A.double())  # (d_out_all, d_in)
        row_norm = torch.linalg.vector_norm(V, dim=1)  # (d_out_all,)
        tuned = (magnitude.double().reshape(-1) / row_norm)[:, None] * V  # (d_out_all, d_in)
        return [(None, Dense((tuned - base)[rows]))]


class _AdaLora(_Variant):
    """AdaLoRA: ΔW = B @ (A ⊙ E) · α / (init_r + 1e-5); ranknum is init_r, not saved."""

    config_fields = ("init_r", "target_r", "lora_alpha")
    parts = ("lora_A", "lora_B", "lora_E")

    def name(self, ckpt):
        return "AdaLoRA"

    def resolve_scale(self, ckpt, adapted):
        init_r = ckpt.config.get("init_r")
        alpha = ckpt.config.get("lora_alpha")
        if not isinstance(init_r, int) or not isinstance(alpha, int | float):
            raise FormatError(
                f"{ckpt.config_path}: AdaLoRA needs numbers in init_r and lora_alpha; found "
                f"init_r={init_r!r}, lora_alpha={alpha!r}"
            )
        a, b, e = (ckpt.shape_of(adapted, part) for part in ("lora_A", "lora_B", "lora_E"))
        kept = a[0]
        if b[1] != kept or tuple(e) != (kept, 1) or kept > init_r:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have lora_A (k, d_in), lora_E "
                f"(k, 1) and lora_B (d_out, k) with k ≤ init_r={init_r}; found {a}, {e}, {b}"
            )
        alpha = alpha if alpha > 0 else float(init_r)
        adapted.rank = kept
        adapted.scale = alpha / (init_r + 1e-5)
        adapted.scale_source = f"config: lora_alpha/(init_r + 1e-5) = {alpha:g}/({init_r} + 1e-5)"

    def module_shape(self, ckpt, adapted):
        return (ckpt.shape_of(adapted, "lora_B")[0], ckpt.shape_of(adapted, "lora_A")[1])

    def updates(self, ckpt, adapted, rows, base):
        A, B, E = (  # (k, d_in), (d_out, k), (k, 1): widened before any arithmetic
            t.double() for t in ckpt.need(adapted, "lora_A", "lora_B", "lora_E")
        )
        return [(None, Factored(B[rows], A * E, adapted.scale))]  # A ⊙ E: (k, d_in) float64


class _LoHa(_Variant):
    """LoHa: ΔW = (w1a @ w1b) ⊙ (w2a @ w2b) · α/r, a dense Hadamard product."""

    parts = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")

    def name(self, ckpt):
        return "LoHa"

    def kind(self, ckpt):
        return "dense"

    def resolve_scale(self, ckpt, adapted):
        if "hada_t1" in adapted.parts or "hada_t2" in adapted.parts:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} uses LoHa's CP decomposition (hada_t1/t2, "
                "for convolutions); spectra reads LoHa on linear layers only"
            )
        rank, alpha, rank_source, alpha_source = ckpt.rank_and_alpha(adapted.module, "alpha")
        w1a, w1b = ckpt.shape_of(adapted, "hada_w1_a"), ckpt.shape_of(adapted, "hada_w1_b")
        if w1a[1] != rank or w1b[0] != rank:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have hada_w1_a (d_out, {rank}) for "
                f"r={rank} ({rank_source}); found {w1a} and {w1b}"
            )
        adapted.scale_by(rank, alpha, rank_source, alpha_source)

    def module_shape(self, ckpt, adapted):
        return (ckpt.shape_of(adapted, "hada_w1_a")[0], ckpt.shape_of(adapted, "hada_w1_b")[1])

    def updates(self, ckpt, adapted, rows, base):
        w1a, w1b, w2a, w2b = (
            t.double()
            for t in ckpt.need(adapted, "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        )
        delta = (w1a @ w1b) * (w2a @ w2b) * adapted.scale  # (d_out, d_in)
        return [(None, Dense(delta[rows]))]


class _LoKr(_Variant):
    """LoKr: ΔW = kron(w1, w2) · α/r, each factor stored whole or as ``_a @ _b``."""

    parts = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")

    def name(self, ckpt):
        return "LoKr"

    def kind(self, ckpt):
        return "dense"

    def resolve_scale(self, ckpt, adapted):
        if "lokr_t2" in adapted.parts:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} uses LoKr's CP decomposition (lokr_t2, for "
                "convolutions); spectra reads LoKr on linear layers only"
            )
        rank, alpha, rank_source, alpha_source = ckpt.rank_and_alpha(adapted.module, "alpha")
        adapted.scale_by(rank, alpha, rank_source, alpha_source)

    def _factor_shape(self, ckpt, adapted, which: str) -> tuple[int, int]:
        if which in adapted.parts:
            return tuple(ckpt.shape_of(adapted, which))
        a, b = ckpt.shape_of(adapted, f"{which}_a"), ckpt.shape_of(adapted, f"{which}_b")
        return (a[0], b[1])

    def _factor(self, ckpt, adapted, which: str) -> torch.Tensor:
        if which in adapted.parts:
            return ckpt.need(adapted, which)[0].double()
        a, b = ckpt.need(adapted, f"{which}_a", f"{which}_b")
        return a.double() @ b.double()

    def module_shape(self, ckpt, adapted):
        w1 = self._factor_shape(ckpt, adapted, "lokr_w1")
        w2 = self._factor_shape(ckpt, adapted, "lokr_w2")
        return (w1[0] * w2[0], w1[1] * w2[1])

    def updates(self, ckpt, adapted, rows, base):
        w1 = self._factor(ckpt, adapted, "lokr_w1")
        w2 = self._factor(ckpt, adapted, "lokr_w2")
        delta = torch.kron(w1, w2) * adapted.scale  # (d_out, d_in)
        return [(None, Dense(delta[rows]))]


class _Vera(_Variant):
    """VeRA: ΔW = diag(λ_b) B[:d_out] diag(λ_d) A[:, :d_in], A and B shared by all modules.

    peft makes the shared ``vera_A`` ``(r, max d_in)`` and ``vera_B``
    ``(max d_out, r)`` over the adapted modules and slices them per module
    (``vera_A[:, :in_features]``, ``vera_B[:out_features, :]``). d_out is the
    length of ``vera_lambda_b``; d_in is saved nowhere in the adapter, so it
    comes from the base model (found from ``base_model_name_or_path`` as for
    DoRA, or ``--base``), and without it the analysis is refused.
    """

    config_fields = ("r", "save_projection", "projection_prng_key", "d_initial")
    parts = ("vera_lambda_b", "vera_lambda_d")
    why_base = (
        "VeRA slices the shared vera_A to each module's own d_in (vera_A[:, :d_in]), which is "
        "saved nowhere in the adapter: it comes from the base model's weights."
    )

    def name(self, ckpt):
        return "VeRA"

    def needs_base(self, ckpt):
        return True

    def warnings(self, ckpt):
        if ckpt.base_weights is None:
            width = ckpt.store.info(ckpt.shared["vera_A"]).shape[1]
            return [
                f"VeRA: each module's d_in comes from the base model (the shared vera_A is "
                f"{width} wide, the widest module's); shapes show d_in as unknown and analysing "
                "needs --base DIR"
            ]
        return []

    def resolve_scale(self, ckpt, adapted):
        missing = [name for name in ("vera_A", "vera_B") if name not in ckpt.shared]
        if missing:
            hint = (
                " (save_projection is false: peft regenerates them from projection_prng_key)"
                if ckpt.config.get("save_projection") is False
                else ""
            )
            raise FormatError(
                f"{ckpt.store.path}: VeRA's shared {' and '.join(missing)} are not in the file"
                f"{hint}; re-save the adapter with save_projection=True"
            )
        rank = ckpt.store.info(ckpt.shared["vera_A"]).shape[0]
        lambda_d = ckpt.shape_of(adapted, "vera_lambda_d")
        if tuple(lambda_d) != (rank,):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have vera_lambda_d ({rank},) to "
                f"match vera_A; found {lambda_d}"
            )
        adapted.rank = rank
        adapted.scale = 1.0
        adapted.scale_source = "VeRA: the scaling vectors λ_b, λ_d carry the scale"

    def module_shape(self, ckpt, adapted):
        d_out = ckpt.shape_of(adapted, "vera_lambda_b")[0]
        ref = next(r for r in ckpt.modules.values() if r.module == adapted.module)
        base_ref = None
        if ckpt.base_weights is not None:
            base_ref = ckpt.base_weights.modules.get((ref.layer, ref.role))
        if base_ref is None:
            found = f"{ckpt.base} has no such module" if ckpt.base_weights else "no base model"
            raise MissingBaseError(
                f"{ckpt.store.path}: VeRA module {adapted.module} needs its d_in, which only the "
                f"base model gives ({found}): pass --base DIR"
            )
        d_in = ckpt.base_weights.module_shape(base_ref)[1]
        a_shape = ckpt.store.info(ckpt.shared["vera_A"]).shape  # (r, widest d_in)
        b_shape = ckpt.store.info(ckpt.shared["vera_B"]).shape  # (widest d_out, r)
        if d_in > a_shape[1] or d_out > b_shape[0]:
            raise FormatError(
                f"{ckpt.store.path}: VeRA module {adapted.module} is ({d_out}, {d_in}) in the base "
                f"{ckpt.base}, but the shared vera_A {tuple(a_shape)} and vera_B "
                f"{tuple(b_shape)} are cut from the widest module, so they cannot be narrower; "
                "is --base the model this adapter was trained on?"
            )
        return (d_out, d_in)

    def shape_before_base(self, ckpt, adapted):
        return (ckpt.shape_of(adapted, "vera_lambda_b")[0], None)

    def updates(self, ckpt, adapted, rows, base):
        d_out, d_in = self.module_shape(ckpt, adapted)
        A = ckpt.store.load(ckpt.shared["vera_A"])[:, :d_in].double()  # (r, d_in)
        B = ckpt.store.load(ckpt.shared["vera_B"])[:d_out].double()  # (d_out, r)
        lambda_b, lambda_d = (  # (d_out,), (r,)
            t.double() for t in ckpt.need(adapted, "vera_lambda_b", "vera_lambda_d")
        )
        scaled_B = lambda_b[:, None] * B  # (d_out, r)
        scaled_A = lambda_d[:, None] * A  # (r, d_in)
        return [(None, Factored(scaled_B[rows], scaled_A, 1.0))]


_VARIANTS: dict[str, _Variant] = {
    "LORA": _Lora(),
    "ADALORA": _AdaLora(),
    "LOHA": _LoHa(),
    "LOKR": _LoKr(),
    "VERA": _Vera(),
}
PEFT_TYPES = tuple(_VARIANTS)
