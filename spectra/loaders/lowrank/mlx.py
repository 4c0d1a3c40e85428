"""MLX-LM adapters: ``adapters.safetensors`` + ``adapter_config.json`` (``mlx_lm.lora``).

Facts from mlx-lm's own code (``mlx_lm/tuner/lora.py``, ``dora.py``,
``utils.py``, ``trainer.py``, ``lora.py``):

- the config is ``vars(args)`` of the training run: ``fine_tune_type``
  (``lora``, ``dora`` or ``full``; older runs: ``use_dora``), ``lora_parameters``
  ``{rank, scale, dropout, keys}``, ``num_layers``, ``model`` (the base);
- ``LoRALinear`` holds ``lora_a (d_in, r)`` and ``lora_b (r, d_out)`` and adds
  ``scale · (x @ lora_a) @ lora_b``: its ``fuse`` adds
  ``ΔW = (scale · lora_bᵀ) @ lora_aᵀ`` to the ``(d_out, d_in)`` weight.
  ``scale`` is absolute (no α, no division by r; mlx-lm refuses a config
  without it, and so does spectra);
- ``DoRALinear`` adds a magnitude ``m (d_out,)``: ``fuse`` gives
  ``diag(m / ‖W0 + ΔW‖_row) (W0 + ΔW)``;
- ``fine_tune_type: full`` saves the trained layers' full weights in
  ``adapters.safetensors``: ΔW = W_tuned − W_base, which needs the base;
- every ``save_every`` steps the trainer also writes ``NNNNNNN_adapters.safetensors``
  (the step, 7 digits) beside the final file: each is a checkpoint that
  ``spectra analyze FILE`` or ``spectra sweep RUN --glob '*_adapters.safetensors'``
  reads (the config beside it gives the scale; the step is the number in the name).

Tensor names are the model's parameter paths (``model.layers.3.self_attn.k_proj.lora_a``),
which follow Hugging Face's module names; ``LoRASwitchLinear`` (experts,
3-D factors) and ``LoRAEmbedding`` are listed as not analysed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ...arguments import DIRECTIONAL_ONLY, GLOB
from ...errors import FormatError
from ..full import FullCheckpoint
from ..naming.architectures import map_with_reasons
from ..registry import Format, register
from ..storage import metadata
from ..storage.tensors import open_store
from .common import LoraFileCheckpoint, LowRankModule

__all__ = ["MLX_CONFIG", "MLX_WEIGHTS", "MlxFullCheckpoint", "MlxLoraCheckpoint"]

MLX_CONFIG = "adapter_config.json"
MLX_WEIGHTS = "adapters.safetensors"
_CHECKPOINT = re.compile(r"^\d+_adapters\.safetensors$")
_CHECKPOINTS_GLOB = "'*_adapters.safetensors'"  # the training checkpoints, as a sweep's --glob
_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_a|lora_b|m)$")
_EXPERTS = (
    "LoRA on a mixture-of-experts SwitchLinear (one factor pair per expert, 3-D): not read yet"
)
_UNUSED_M = "a DoRA magnitude in a fine_tune_type lora adapter: LoRALinear does not use it"
_NOT_LORA = "not a tensor of an MLX-LM LoRA layer (lora_a, lora_b, m)"


def _mlx_config(folder: Path) -> dict | None:
    """The parsed ``adapter_config.json`` when it is MLX-LM's (no ``peft_type``), else None."""
    try:
        config = json.loads((folder / MLX_CONFIG).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or "peft_type" in config:
        return None
    return config if ("lora_parameters" in config or "fine_tune_type" in config) else None


def _is_weights_file(path: Path) -> bool:
    return path.name == MLX_WEIGHTS or bool(_CHECKPOINT.match(path.name))


def claims(path: Path) -> bool:
    """A folder with MLX-LM's config and adapter file(s), or one of those files."""
    if path.is_dir():
        has_weights = (path / MLX_WEIGHTS).is_file() or any(
            _CHECKPOINT.match(p.name) for p in path.glob("*_adapters.safetensors")
        )
        return has_weights and _mlx_config(path) is not None
    return path.is_file() and _is_weights_file(path) and _mlx_config(path.parent) is not None


def _weights(path: Path) -> Path:
    if path.is_file():
        return path
    if (path / MLX_WEIGHTS).is_file():
        return path / MLX_WEIGHTS
    found = sorted(p.name for p in path.iterdir() if _CHECKPOINT.match(p.name))
    raise FormatError(
        f"{path}: an MLX-LM adapter folder with no {MLX_WEIGHTS}; found the training checkpoints "
        f"{', '.join(found[:4])}{' …' if len(found) > 4 else ''}: pass one of them, or sweep "
        f"them with {GLOB(_CHECKPOINTS_GLOB)}"
    )


def _fine_tune_type(config: dict, config_path: Path) -> str:
    kind = config.get("fine_tune_type")
    if kind is None:  # mlx-lm before fine_tune_type: use_dora
        kind = "dora" if config.get("use_dora") else "lora"
    if kind not in ("lora", "dora", "full"):
        raise FormatError(
            f"{config_path}: expected fine_tune_type lora, dora or full, found {kind!r}"
        )
    return kind


def _base_from_config(config: dict, base: Path | None, base_lookup) -> tuple[Path | None, str]:
    """``base``, or the config's ``model`` found locally (never downloaded); and a note."""
    name = config.get("model")
    if base is not None or base_lookup is None or not isinstance(name, str) or not name:
        return base, ""
    found = base_lookup(name)
    if found is None:
        return None, ""
    where = "" if str(found) == name else f", at {found}"
    return found, f"base model found from the config's model {name!r}{where}"


class MlxLoraCheckpoint(LoraFileCheckpoint):
    """An MLX-LM LoRA or DoRA adapter file (``fine_tune_type`` lora / dora)."""

    format = "mlx"
    method = "LoRA (MLX-LM)"

    def __init__(self, path, base, *, base_lookup=None, directional_only: bool = False):
        weights = _weights(path)
        super().__init__(path, base)
        self.config_path = weights.parent / MLX_CONFIG
        self.config = _mlx_config(weights.parent) or {}
        self.kind = _fine_tune_type(self.config, self.config_path)
        self.store = open_store(weights)
        self.base_hint = f" (the config's model is {self.config.get('model')!r}, not found locally)"
        self.scale, self.rank = self._scale_and_rank()
        self.lora, self.left_out = self._read_modules()
        self._notes: list[str] = []
        if base is None and self.dora and not directional_only:
            base, note = _base_from_config(self.config, base, base_lookup)
            self._notes += [note] if note else []
        self.finish(base, directional_only=directional_only)

    def _scale_and_rank(self) -> tuple[float, int | None]:
        params = self.config.get("lora_parameters")
        if not isinstance(params, dict):
            raise FormatError(
                f"{self.config_path}: expected lora_parameters {{rank, scale, …}} for "
                f"fine_tune_type {self.kind}, found {params!r}"
            )
        scale, rank = params.get("scale"), params.get("rank")
        if not isinstance(scale, int | float) or isinstance(scale, bool):
            hint = (
                " (it has 'alpha': MLX-LM's LoRA takes an absolute 'scale', not α)"
                if "alpha" in params
                else ""
            )
            raise FormatError(
                f"{self.config_path}: expected a number for lora_parameters.scale (MLX-LM's "
                f"ΔW = scale · (lora_a @ lora_b)ᵀ), found {scale!r}{hint}; mlx-lm cannot load "
                "this adapter either"
            )
        return float(scale), rank if isinstance(rank, int) else None

    def _read_modules(self) -> tuple[dict[str, LowRankModule], list[tuple[str, str]]]:
        parts: dict[str, dict[str, str]] = {}
        left_out: list[tuple[str, str]] = []
        for name in self.store.names():
            match = _KEY.match(name)
            if match is None:
                left_out.append((name, _NOT_LORA))
            else:
                parts.setdefault(match["module"], {})[match["part"]] = name
        for module in [m for m, p in parts.items() if self._experts(p)]:
            left_out += [(name, _EXPERTS) for name in parts.pop(module).values()]
        if self.kind != "dora":  # a magnitude no LoRALinear reads
            for module in parts:
                if "m" in parts[module]:
                    left_out.append((parts[module].pop("m"), _UNUSED_M))
        refs, unmapped = map_with_reasons(parts)
        for module, reason in unmapped.items():
            left_out += [(name, reason) for name in parts[module].values()]
        lora = {}
        for ref in refs.values():
            lora[ref.module] = self._module(ref, parts[ref.module])
        return lora, left_out

    def _experts(self, parts: dict[str, str]) -> bool:
        """A ``LoRASwitchLinear``: its factors are 3-D ``(experts, …)``."""
        return any(len(self.store.info(name).shape) == 3 for name in parts.values())

    def _module(self, ref, parts: dict[str, str]) -> LowRankModule:
        missing = [p for p in ("lora_a", "lora_b") if p not in parts]
        if missing or (self.kind == "dora" and "m" not in parts):
            need = "lora_a, lora_b" + (" and m" if self.kind == "dora" else "")
            raise FormatError(
                f"{self.store.path}: {ref.module} should have {need} for fine_tune_type "
                f"{self.kind}; found {', '.join(sorted(parts))}"
            )
        a, b = (self.store.info(parts[p]).shape for p in ("lora_a", "lora_b"))
        rank = self.rank if self.rank is not None else (a[1] if len(a) == 2 else -1)
        if len(a) != 2 or len(b) != 2 or a[1] != rank or b[0] != rank:
            raise FormatError(
                f"{self.store.path}: {ref.module} should have lora_a (d_in, {rank}) and lora_b "
                f"({rank}, d_out) for rank {rank} from {self.config_path.name} "
                f"(lora_parameters.rank); found lora_a {a} and lora_b {b}"
            )
        magnitude = parts.get("m") if self.kind == "dora" else None
        return LowRankModule.of(
            ref=ref,
            a=parts["lora_a"],
            b=parts["lora_b"],
            rank=rank,
            shape=(b[1], a[0]),
            scale=self.scale,
            scale_source=f"config: lora_parameters.scale = {self.scale:g} (absolute, no α/r)",
            magnitude=magnitude,
            transposed=True,
        )

    def warnings(self) -> list[str]:
        return self._notes + super().warnings()

    def details(self) -> dict[str, object]:
        keys = ("fine_tune_type", "lora_parameters", "num_layers", "model")
        fields = {k: self.config[k] for k in keys if k in self.config}
        return {"weights": str(self.store.path), **fields}

    def training(self) -> dict[str, object]:
        return metadata.mlx(self.config, self.config_path)


class MlxFullCheckpoint(FullCheckpoint):
    """``fine_tune_type: full``: the trained layers' weights; ΔW = W_tuned − W_base."""

    format = "mlx"

    def __init__(self, path: Path, base: Path | None, config: dict, note: str):
        super().__init__(path, base)
        self.config = config
        self.note = note

    @property
    def variant(self) -> str:
        return "full fine-tune (MLX-LM)"

    def warnings(self) -> list[str]:
        return ([self.note] if self.note else []) + super().warnings()

    def details(self) -> dict[str, object]:
        keys = ("fine_tune_type", "num_layers", "model")
        return super().details() | {k: self.config[k] for k in keys if k in self.config}

    def training(self) -> dict[str, object]:
        return metadata.mlx(self.config, self.path.parent / MLX_CONFIG)


def open_mlx(path: Path, base: Path | None, *, base_lookup=None, directional_only: bool = False):
    """An MLX-LM adapter folder, or one of its ``[NNNNNNN_]adapters.safetensors`` files."""
    weights = _weights(path)
    config = _mlx_config(weights.parent) or {}
    if _fine_tune_type(config, weights.parent / MLX_CONFIG) == "full":
        if directional_only:
            raise FormatError(f"{path}: {DIRECTIONAL_ONLY} applies to DoRA, not a full fine-tune")
        base, note = _base_from_config(config, base, base_lookup)
        return MlxFullCheckpoint(weights, base, config, note)
    return MlxLoraCheckpoint(path, base, base_lookup=base_lookup, directional_only=directional_only)


FORMAT = register(
    Format(
        name="mlx",
        priority=60,  # before peft, whose adapter_config.json name it shares
        claims=claims,
        open=open_mlx,
        options=(DIRECTIONAL_ONLY,),
        recognised_by=(
            "adapter_config.json with lora_parameters / fine_tune_type and no peft_type, beside "
            "adapters.safetensors or NNNNNNN_adapters.safetensors (MLX-LM)"
        ),
    )
)
