"""Reading a PEFT adapter folder: config, weights, tensor names, and the variant to rebuild with.

``PeftCheckpoint`` finds the adapter to read (a sub-folder adapter, or one of
several saved in one file: ``adapter=NAME``, ``--adapter``), parses its
``adapter_config.json``, opens ``adapter_model.safetensors`` (or ``.bin``),
groups the tensors by module and part, maps the modules to (layer, role),
finds the base model from ``base_model_name_or_path`` when one is needed (a
local folder or the local Hub cache, never a download), and lists every tensor
no analysed ΔW uses with its reason (``not_analysed()``). How ΔW is rebuilt
belongs to the ``peft_type``'s variant (``variant.VARIANTS``, registered by ``lora.py``,
``adalora.py``, ``lycoris.py``, ``vera.py``), which is handed this checkpoint
for what it needs.

``rank_pattern`` / ``alpha_pattern`` override r and α per module: a key
matches a module path when ``(.*\\.)?{key}$`` matches it, first key wins
(PEFT's ``get_pattern_key``). Keys may carry the adapter name
(``lora_A.default.weight``); a file holding several adapters is read only with
``adapter=NAME``. ``lora_bias=True`` saves a ``lora_B.bias``: it adds a
constant, not part of ΔW, and is listed by ``not_analysed()`` with that
reason, as are multi-head routers, tensors of adapters not selected,
``modules_to_save`` weights and modules the architecture map does not know.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ...arguments import ADAPTER, BASE, INITIAL
from ...errors import FormatError, MissingBaseError
from ..adapter import AdapterCheckpoint, Rows
from ..base import Selection, summarise_not_analysed
from ..methods import lora
from ..naming.architectures import NO_DEPTH, ModuleRef, canonical_name, map_with_reasons
from ..storage.tensors import TensorStore, open_store
from .adalora import AdaLora  # noqa: F401  importing a variant's module registers it
from .initial import InitialAdapter
from .lora import Lora  # noqa: F401
from .lycoris import LoHa, LoKr  # noqa: F401
from .variant import VARIANTS, Adapted, Variant
from .vera import Vera  # noqa: F401

# The families added with peft 0.21's methods: importing a module registers its variants.
from . import multiplicative, newer, oft, psoft, refused, shared_bases  # noqa: F401  isort: skip
from . import fourierft, frod, ln_tuning, miss, structured  # noqa: F401  isort: skip

# base_model_name_or_path → a local model folder, or None. Given by the caller
# (``spectra.load`` looks in the local Hub cache): the loaders resolve no names.
BaseLookup = Callable[[str], Path | None]

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FILES",
    "PEFT_TYPES",
    "VARIANTS",
    "BaseLookup",
    "PeftCheckpoint",
    "adapter_folder",
    "read_adapter_config",
    "sub_adapters",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_BIAS = re.compile(r"^lora_B\d*$")  # lora_bias=True: lora_B is an nn.Linear with a bias
_ADAPTER = r"(?:\.(?P<adapter>[A-Za-z0-9_-]+))?"  # the adapter name, when the key keeps it
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
            f"{', '.join(names) or 'none'} ({ADAPTER})"
        )
    raise FormatError(
        f"{path}: holds several adapters in sub-folders ({', '.join(names)}); "
        f"choose one with {ADAPTER('NAME')}"
    )


@dataclass(frozen=True)
class _Key:
    """One tensor name of an adapter file, parsed: its module, part and adapter name."""

    name: str
    module: str  # canonical module path; "" for a shared tensor (VeRA's vera_A / vera_B)
    part: str  # lora_A, lora_B0, vera_A, …
    adapter: str | None  # the adapter name kept in the key, if any
    bias: bool = False  # a lora_B bias (lora_bias=True)


@functools.cache
def _key_patterns(registered: int) -> tuple[re.Pattern, re.Pattern | None]:
    """(module part, shared tensor) patterns over every registered variant's tensor names.

    ``registered`` (the number of variants) keys the cache, so that a variant
    registered later is parsed too.
    """
    module_parts = "|".join(part for v in VARIANTS.values() for part in v.key_parts)
    shared_parts = "|".join(part for v in VARIANTS.values() for part in v.shared_parts)
    module = re.compile(rf"^(?P<module>.+)\.(?P<part>{module_parts}){_ADAPTER}$")
    shared = re.compile(rf"^(?:base_model\.)?(?P<part>{shared_parts}){_ADAPTER}$")
    return module, shared if shared_parts else None


def _parse_key(name: str) -> _Key | None:
    """Parse an adapter tensor name; ``None`` for a tensor of no known part."""
    module_key, shared_key = _key_patterns(len(VARIANTS))
    bias = name.endswith(".bias")
    stem = name.removesuffix(".bias") if bias else name.removesuffix(".weight")
    match = module_key.match(stem)
    if match is not None and (not bias or _BIAS.match(match["part"])):
        return _Key(name, canonical_name(match["module"]), match["part"], match["adapter"], bias)
    match = shared_key.match(stem) if shared_key is not None and not bias else None
    if match is not None:
        return _Key(name, "", match["part"], match["adapter"])
    return None


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
        base_lookup: BaseLookup | None = None,
        initial: str | Path | None = None,
    ):
        folder = adapter_folder(path, adapter)
        self.base_lookup = base_lookup  # base_model_name_or_path → a local model folder, or None
        super().__init__(folder, base)
        self.adapter_name = adapter
        self.from_sub_folder = folder != path
        self.config = read_adapter_config(folder)
        self.config_path = folder / ADAPTER_CONFIG
        self.per_head = per_head
        self.directional_only = directional_only
        self.peft_type = str(self.config.get("peft_type", "")).upper()
        self.initial: InitialAdapter | None = None  # initial=: ΔW = s·(B@A − B₀@A₀)
        self._notes: list[str] = []
        self.rebuild = self._variant()
        self.store = self._open_weights()
        self._left_out: list[tuple[str, str]] = []  # (tensor, reason): see not_analysed()
        self.adapted, self.shared, self.skipped = self._read_modules()
        self.rebuild.check_file(self)  # a file the variant refuses whole, with its reason
        self._map_modules(encoder_layers=None)
        if base is None:
            base = self._found_base()
        self.open_base(base)
        if self.base_weights is not None and self.base_weights.encoder_layers is not None:
            self._map_modules(self.base_weights.encoder_layers)  # T5 decoder blocks
        if not self.modules:
            raise FormatError(
                f"{self.store.path}: no attention or MLP projection is adapted; adapted modules: "
                f"{', '.join(sorted(self.adapted)[:10]) or 'none'}. "
                f"{summarise_not_analysed(self.not_analysed())}"
            )
        for adapted in self.adapted.values():
            if adapted.module in self.mapped:
                self.rebuild.resolve_scale(self, adapted)
        if initial is not None:
            self.initial = InitialAdapter(self, Path(initial))

    # -- reading -----------------------------------------------------------

    def _variant(self) -> Variant:
        variant = VARIANTS.get(self.peft_type)
        if variant is None:
            raise FormatError(
                f"{self.config_path}: peft_type {self.config.get('peft_type')!r} is not supported; "
                f"spectra reads {', '.join(sorted(VARIANTS))}"
            )
        if variant.refused:
            raise FormatError(
                f"{self.config_path}: peft_type {variant.peft_type} is not analysed: "
                f"{variant.refused}"
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

    def _read_modules(self) -> tuple[dict[str, Adapted], dict[str, str], list[str]]:
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
        adapted: dict[str, Adapted] = {}
        shared: dict[str, str] = {}
        for key in keys:
            if key.adapter != chosen:
                other = key.adapter or "default"
                reason = f"adapter {other!r} of the same file, not selected ({ADAPTER(other)})"
                self._left_out.append((key.name, reason))
            elif key.bias:
                self._left_out.append((key.name, LORA_BIAS))
            elif not key.module:
                shared[key.part] = key.name
            else:
                adapted.setdefault(key.module, Adapted(key.module)).parts[key.part] = key.name
        return adapted, shared, skipped

    def _choose_adapter(self, found: set[str | None]) -> str | None:
        """Which adapter name of the file to read (``--adapter``); unnamed keys are ``None``."""
        requested = self.adapter_name
        listing = ", ".join(sorted(name or "(unnamed)" for name in found))
        if requested is None or self.from_sub_folder:
            if len(found) > 1:
                raise FormatError(
                    f"{self.store.path}: holds several adapters in one file ({listing}); "
                    f"choose one with {ADAPTER('NAME')}"
                )
            return next(iter(found), None)
        if requested in found:
            return requested
        if requested == "default" and found <= {None}:
            return None
        raise FormatError(
            f"{self.store.path}: no adapter named {requested!r}; adapters in this file: "
            f"{listing or 'none'}; sub-folder adapters: "
            f"{', '.join(sub_adapters(self.path)) or 'none'} ({ADAPTER})"
        )

    def _map_modules(self, encoder_layers: int | None) -> None:
        """Map the adapted modules to (layer, role); the others get their reason."""
        self.modules, self.unmapped = map_with_reasons(self.adapted, encoder_layers, experts=True)
        self.mapped = {member.module for ref in self.modules.values() for member in ref.members}

    def _found_base(self) -> Path | None:
        heads_needed = any(ref.needs_heads for ref in self.modules.values())
        depth_needed = NO_DEPTH in self.unmapped.values()
        if not (self.rebuild.needs_base(self) or heads_needed or depth_needed):
            return None
        name = self.config.get("base_model_name_or_path")
        found = self.base_lookup(name) if self.base_lookup is not None and name else None
        if found is not None:
            where = "" if str(found) == name else f", at {found}"
            self._notes.append(f"base model found from base_model_name_or_path {name!r}{where}")
        return found

    def _require(self, adapted: Adapted, parts: tuple[str, ...]) -> None:
        missing = [part for part in parts if part not in adapted.parts]
        if missing:
            raise FormatError(
                f"{self.store.path}: module {adapted.module} has no {', '.join(missing)} "
                f"tensor, which {self.peft_type} needs; the adapter file is incomplete"
            )

    def need(self, adapted: Adapted, *parts: str) -> list[torch.Tensor]:
        """Load the named parts of a module, with a clear error for a missing one."""
        self._require(adapted, parts)
        return [self.store.load(adapted.parts[part]) for part in parts]

    def shape_of(self, adapted: Adapted, part: str) -> tuple[int, ...]:
        """The shape of one part of a module, from the header."""
        self._require(adapted, (part,))
        return self.store.info(adapted.parts[part]).shape

    def rank_and_alpha(self, module: str, alpha_field: str) -> tuple[int, float, str, str]:
        """r and α of a module from the config and its patterns, with where each came from."""
        return lora.rank_and_alpha(self.config, module, alpha_field, str(self.config_path))

    # -- Checkpoint --------------------------------------------------------

    @property
    def variant(self) -> str:
        return self.rebuild.name(self)

    def available(self):
        return self.modules.keys()

    def warnings(self) -> list[str]:
        warnings = list(self._notes)
        init = self.config.get("init_lora_weights")
        if self.initial is not None:
            warnings.append(
                f"ΔW = s·(B@A − B₀@A₀) against the initial adapter {self.initial.path} "
                f"({INITIAL}): the update of the original weights, rank ≤ 2r"
            )
        elif isinstance(init, str) and init.lower().startswith(_W0_CHANGING_INITS):
            warnings.append(
                f"init_lora_weights={init!r} changes W0 when the adapter is created: the "
                "rebuilt ΔW is the update from that modified W0, not W_merged − W_original; "
                f"pass {INITIAL('DIR')} (the adapter saved before training) for that"
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
        known = self.rebuild.shared_parts  # a shared tensor its method does not read is listed
        for part, name in self.shared.items():
            if not any(re.fullmatch(pattern, part) for pattern in known):
                left_out.append((name, self.rebuild.unused_reason(self, part)))
        return [(name, self.rebuild.tensor_reason(self, name) or why) for name, why in left_out]

    def _modules_to_save(self) -> list[str]:
        names = self.config.get("modules_to_save") or []
        return sorted(
            tensor
            for tensor in self.skipped
            if any(re.search(rf"(?:^|\.){re.escape(n)}\.", canonical_name(tensor)) for n in names)
        )

    def module_shape(self, ref: ModuleRef) -> tuple[int, int]:
        return self.rebuild.module_shape(self, self.adapted[ref.module])

    def module_dtype(self, ref: ModuleRef) -> torch.dtype:  # the first floating-point part's
        dtypes = [self.store.info(name).dtype for name in self.adapted[ref.module].parts.values()]
        return next((dtype for dtype in dtypes if dtype.is_floating_point), dtypes[0])

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
                f"in the local Hugging Face cache: pass {BASE('DIR')}{self.rebuild.base_hint}"
            )
        super().check(selection)

    def factors(self, ref: ModuleRef) -> dict[str, object]:
        adapted = self.adapted[ref.module]
        initial = self.initial is not None  # [B, −B₀] @ [A; A₀]: rank ≤ 2r
        return {
            "kind": self.rebuild.kind(self),
            "rank": 2 * adapted.rank if initial else adapted.rank,
            "scale": adapted.scale,
            "scale_source": adapted.scale_source + (" (B@A − B₀@A₀)" if initial else ""),
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
        if self.initial is not None:
            details["initial"] = str(self.initial.path)
        return details

    def source_files(self) -> list[Path]:
        initial = self.initial.files() if self.initial is not None else []
        return [*super().source_files(), *initial]


PEFT_TYPES = tuple(VARIANTS)  # every peft_type read, once each variant module registered
