"""llama.cpp LoRA adapters in GGUF (``convert_lora_to_gguf.py``), read with the ``gguf`` package.

Facts from llama.cpp's code: the converter writes ``general.type = adapter``,
``adapter.type = lora`` and ``adapter.lora.alpha`` (float32: the PEFT config's
global ``lora_alpha``), and for each adapted weight ``W`` (named as in a GGUF
model: ``blk.N.attn_q.weight``, ``attn_k``, ``attn_v``, ``attn_output``,
``ffn_gate``, ``ffn_up``, ``ffn_down``) the tensors ``W.lora_a`` ``(r, d_in)``
and ``W.lora_b`` ``(d_out, r)``, in f32, f16, bf16 or q8_0 (a tensor whose
rows do not split into q8_0 blocks stays f16). ``src/llama-adapter.*`` applies
``scale = alpha / r`` with ``r`` from ``lora_a``'s shape, and ``scale = 1``
when alpha is 0 or absent. So ΔW = scale · lora_b @ lora_a, each tensor
dequantised with gguf's own ``dequantize``.

The converter keeps only the global ``lora_alpha``: ``use_rslora`` (α/√r)
and ``alpha_pattern`` are dropped, and no GGUF records whether the adapter
had them, so every report says the scale is llama.cpp's, which differs from
training's for such adapters (balance metrics are scale-invariant; norms are
not). convert_lora_to_gguf.py runs the base model's converter class from
convert_hf_to_gguf.py on each ``lora_b``, so the architectures whose class
permutes q and k rows into GGML's interleaved RoPE order (``LlamaModel.permute``
or the same reshape copied) have their q/k ``lora_b`` rows in that order
(``_INTERLEAVED_ARCHS``); with a base's ``config.json`` spectra puts them back
in Hugging Face's order (``common.py``). Qwen2, Phi-3, Gemma and the other
classes that do not permute keep Hugging Face's order, and so do Llama 4,
Apertus, AFMoE and CogVLM, whose classes derive from LlamaModel but switch the
permutation off (``undo_permute = False``) or bypass it.

Some architectures keep fused projections that gguf's own
``tensor_mapping.py`` names as one tensor: ``ffn_up`` is Hugging Face's
``gate_up_proj`` for phi3, glm4 (GLM-4-0414) and plamo2, and ChatGLM's
``dense_h_to_4h`` for chatglm, all ``[gate; up]`` rows (each model splits it
with ``chunk(2)``, gate first); phi3's ``attn_qkv`` is ``qkv_proj`` (q, k, v
rows as ``naming/architectures.py``'s phi3 layout). Such a tensor is read as one module with
a ref per role (fused ``halves`` / ``phi3``), never as one role; ``attn_qkv``
of other architectures is listed as not analysed.

``gguf`` is an optional dependency (``pip install gguf``), imported only when
a GGUF file is opened; recognising one needs only its magic bytes.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ...errors import FormatError
from ..base import ModuleInfo
from ..methods import lora
from ..naming.architectures import NO_LAYER, NO_ROLE, ModuleRef
from ..registry import Format, register
from ..storage.tensors import TensorInfo
from .common import LoraFileCheckpoint, LowRankModule

__all__ = ["GgufLoraCheckpoint"]

_MAGIC = b"GGUF"
_ROLES = {
    "attn_q": "q",
    "attn_k": "k",
    "attn_v": "v",
    "attn_output": "o",
    "ffn_gate": "gate",
    "ffn_up": "up",
    "ffn_down": "down",
}
_LORA = re.compile(r"^(?P<weight>.+\.weight)\.lora_(?P<part>[ab])$")
_BLOCK = re.compile(r"^blk\.(?P<layer>\d+)\.(?P<name>\w+)\.weight$")
# general.architecture of the convert_hf_to_gguf.py classes that permute q/k rows into GGML's
# RoPE order (read from the converter, ggml-org/llama.cpp): LlamaModel.modify_tensors and the
# subclasses that keep it (LlamaModel, InternLM3, Janus-Pro: llama; Arcee; Ministral3: mistral3;
# Granite, GraniteMoe, GraniteHybrid and its NemotronH / NemotronH-MoE; LlamaEmbedNemotron:
# llama-embed; SmolLM3), classes that call LlamaModel.permute (MiniCPM, InternLM2 from wqkv,
# OLMo, Arctic, Chameleon), and classes with a copy of it (Deci, LLaDA, Deepseek, BailingMoe;
# Xverse and Baichuan, whose copy matches it when kv heads = heads, as in those models).
_INTERLEAVED_ARCHS = frozenset(
    {
        "llama",
        "arcee",
        "mistral3",
        "granite",
        "granitemoe",
        "granitehybrid",
        "nemotron_h",
        "nemotron_h_moe",
        "llama-embed",
        "smollm3",
        "minicpm",
        "internlm2",
        "olmo",
        "arctic",
        "chameleon",
        "deci",
        "llada",
        "deepseek",
        "bailingmoe",
        "xverse",
        "baichuan",
    }
)
# Fused tensors (gguf's tensor_mapping.py): name → (roles in row order, naming layout), per
# architecture. ffn_up is gate_up_proj ([gate; up]) for these; phi3's attn_qkv is qkv_proj.
_FUSED_TENSORS = {
    "phi3": {"ffn_up": ("gate,up", "halves"), "attn_qkv": ("q,k,v", "phi3")},
    "glm4": {"ffn_up": ("gate,up", "halves")},
    "plamo2": {"ffn_up": ("gate,up", "halves")},
    "chatglm": {"ffn_up": ("gate,up", "halves")},
}
_TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_FUSED = "fused q/k/v projection (attn_qkv): its split depends on the architecture; not read yet"
_EXPERTS = "mixture-of-experts tensor (one factor pair per expert): not read yet"
_NOT_LORA = "a full tensor carried in the adapter (e.g. a norm from mergekit-extract-lora), not ΔW"


def claims(path: Path) -> bool:
    """A ``.gguf`` file (its magic bytes; the ``gguf`` package is not needed for this)."""
    if not (path.is_file() and path.suffix.lower() == ".gguf"):
        return False
    with open(path, "rb") as handle:
        return handle.read(4) == _MAGIC


def _gguf():
    try:
        import gguf
    except ImportError:
        raise FormatError(
            "reading a GGUF adapter needs the gguf package, which is not installed: "
            "pip install gguf (or pip install 'spectra[gguf]')"
        ) from None
    return gguf


def _field(reader, key: str) -> object:
    """The value of a metadata key, or None."""
    field = reader.fields.get(key)
    if field is None:
        return None
    if hasattr(field, "contents"):
        return field.contents()
    value = field.parts[field.data[0]]  # gguf before contents(): a numpy array or bytes
    return bytes(value).decode() if value.dtype == np.uint8 else value.tolist()[0]


class _GgufTensors:
    """The tensors of a GGUF file, dequantised on demand with gguf's own ``dequantize``."""

    def __init__(self, path: Path, reader, gguf):
        self.path = path
        self._gguf = gguf
        self._tensors = {tensor.name: tensor for tensor in reader.tensors}

    def names(self) -> list[str]:
        return list(self._tensors)

    def files(self) -> list[Path]:
        return [self.path]

    def type_name(self, name: str) -> str:
        return self._tensors[name].tensor_type.name.lower()

    def info(self, name: str) -> TensorInfo:
        tensor = self._tensors[name]
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # GGUF lists ne0 first
        dtype = _TORCH_DTYPES.get(tensor.tensor_type.name, torch.float32)
        return TensorInfo(shape, dtype, self.path)

    def load(self, name: str) -> torch.Tensor:
        tensor = self._tensors[name]
        values = self._gguf.quants.dequantize(tensor.data, tensor.tensor_type)  # float32
        return torch.from_numpy(np.array(values, dtype=np.float32)).reshape(self.info(name).shape)


class GgufLoraCheckpoint(LoraFileCheckpoint):
    """A llama.cpp LoRA adapter (``general.type = adapter``, ``adapter.type = lora``)."""

    format = "gguf"
    method = "LoRA (llama.cpp GGUF)"
    order_note = "llama.cpp's converter permutes LLaMA q/k rows for GGML's RoPE"

    def __init__(self, path: Path, base: Path | None, *, base_lookup=None):
        super().__init__(path, base)
        gguf = _gguf()
        try:
            reader = gguf.GGUFReader(str(path), "r")
        except (ValueError, OSError, KeyError) as exc:
            raise FormatError(f"{path}: not a readable GGUF file ({exc})") from exc
        kind, adapter = _field(reader, "general.type"), _field(reader, "adapter.type")
        if kind != "adapter" or adapter != "lora":
            raise FormatError(
                f"{path}: expected a GGUF LoRA adapter (general.type = adapter, adapter.type = "
                f"lora), found general.type = {kind!r}, adapter.type = {adapter!r}: spectra reads "
                "GGUF adapters, not GGUF models"
            )
        self.architecture = _field(reader, "general.architecture")
        self.alpha = _field(reader, "adapter.lora.alpha")
        if self.alpha is not None and not isinstance(self.alpha, int | float):
            raise FormatError(
                f"{path}: expected a number for adapter.lora.alpha, found {self.alpha!r}"
            )
        self.store = _GgufTensors(path, reader, gguf)
        self.lora, self.left_out = self._read_modules()
        self.finish(base)

    def _read_modules(self) -> tuple[dict[str, LowRankModule], list[tuple[str, str]]]:
        pairs: dict[str, dict[str, str]] = {}
        left_out = []
        for name in self.store.names():
            match = _LORA.match(name)
            if match is None:
                left_out.append((name, _NOT_LORA))
            else:
                pairs.setdefault(match["weight"], {})[match["part"]] = name
        lora = {}
        fused = _FUSED_TENSORS.get(self.architecture, {})
        for weight, parts in pairs.items():
            block = _BLOCK.match(weight)
            reason = None
            if block is None:
                reason = NO_LAYER
            elif block["name"] in fused:
                refs = _fused_refs(int(block["layer"]), weight, *fused[block["name"]])
                lora[refs[0].module] = replace(self._module(refs[0], parts), fused_refs=refs)
                continue
            elif block["name"] == "attn_qkv":
                reason = _FUSED
            elif block["name"].endswith("_exps") or block["name"].endswith("_shexp"):
                reason = _EXPERTS
            elif block["name"] not in _ROLES:
                reason = NO_ROLE
            if reason is not None:
                left_out += [(name, reason) for name in parts.values()]
                continue
            role = _ROLES[block["name"]]
            ref = ModuleRef(int(block["layer"]), role, weight.removesuffix(".weight"), "gguf")
            lora[ref.module] = self._module(ref, parts)
        self._check_roles(lora)
        return lora, left_out

    def _check_roles(self, lora: dict[str, LowRankModule]) -> None:
        """Refuse two tensors of one (layer, role): a fused ffn_up beside an ffn_gate."""
        seen: dict[tuple[int, str], str] = {}
        for module in lora.values():
            for ref in module.refs:
                other = seen.setdefault((ref.layer, ref.role), ref.module)
                if other != ref.module:
                    raise FormatError(
                        f"{self.store.path}: layer {ref.layer} {ref.role!r} is in both {other} "
                        f"and {ref.module}; expected one of them for general.architecture = "
                        f"{self.architecture!r} (its ffn_up fuses gate and up)"
                    )

    def _module(self, ref: ModuleRef, parts: dict[str, str]) -> LowRankModule:
        if set(parts) != {"a", "b"}:
            raise FormatError(
                f"{self.store.path}: {ref.module}.weight has only lora_{''.join(parts)}; "
                "expected both lora_a and lora_b"
            )
        a, b = (self.store.info(parts[p]).shape for p in ("a", "b"))
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise FormatError(
                f"{self.store.path}: {ref.module}.weight should have lora_a (r, d_in) and lora_b "
                f"(d_out, r) of one rank r; found lora_a {a} and lora_b {b}"
            )
        rank = a[0]
        if self.alpha:
            scale = lora.scale(rank, self.alpha)
            source = f"GGUF: adapter.lora.alpha/r = {self.alpha:g}/{rank}"
        else:
            what = "absent" if self.alpha is None else "0"
            scale, source = 1.0, f"GGUF: adapter.lora.alpha {what} → 1 (llama.cpp's rule)"
        return LowRankModule.of(
            ref=ref,
            a=parts["a"],
            b=parts["b"],
            rank=rank,
            shape=(b[0], a[1]),
            scale=scale,
            scale_source=source,
            interleaved=self.architecture in _INTERLEAVED_ARCHS and ref.role in ("q", "k"),
        )

    def module_info(self, key: tuple[int, str]) -> ModuleInfo:
        info = super().module_info(key)
        module = self.module_of(self.modules[key])
        types = dict.fromkeys(self.store.type_name(name) for name in (module.a, module.b))
        return replace(info, dtype="/".join(types))

    def warnings(self) -> list[str]:
        scale = (
            "adapter.lora.alpha/r" if self.alpha else "1 (no adapter.lora.alpha: llama.cpp's rule)"
        )
        return [
            f"the scale is llama.cpp's, {scale}: its converter keeps only the PEFT config's "
            "global lora_alpha and drops use_rslora (α/√r) and alpha_pattern, which no GGUF "
            "records; if the source adapter used either, norms differ from training's by that "
            "factor (balance metrics are scale-invariant)",
            *super().warnings(),
        ]

    def details(self) -> dict[str, object]:
        types = sorted({self.store.type_name(name) for name in self.store.names()})
        return {
            "weights": str(self.store.path),
            "general.architecture": self.architecture,
            "adapter.lora.alpha": self.alpha,
            "tensor types": types,
        }


def _fused_refs(layer: int, weight: str, roles: str, layout: str) -> tuple[ModuleRef, ...]:
    """One ref per role of a fused GGUF tensor, each picking its rows (a ``ModuleRef``)."""
    module = weight.removesuffix(".weight")
    return tuple(
        ModuleRef(layer, role, module, "gguf", fused=layout, index=index)
        for index, role in enumerate(roles.split(","))
    )


def open_gguf(path: Path, base: Path | None, *, base_lookup=None) -> GgufLoraCheckpoint:
    return GgufLoraCheckpoint(path, base, base_lookup=base_lookup)


FORMAT = register(
    Format(
        name="gguf",
        priority=80,  # a .gguf file: no other format reads one
        claims=claims,
        open=open_gguf,
        recognised_by=(
            "a .gguf file with general.type = adapter, adapter.type = lora (llama.cpp's "
            "convert_lora_to_gguf.py); needs pip install gguf"
        ),
    )
)
