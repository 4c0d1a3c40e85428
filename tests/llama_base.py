"""A tiny LLaMA base saved by transformers, for the MLX-LM, torchtune and GGUF loader tests.

hidden 64, 8 attention heads and 2 key/value heads of dimension 8 (grouped
queries, so k is (16, 64)), 2 layers, MLP 96, vocabulary 100: small enough
to write and merge in well under a second, shaped like the models these
tools fine-tune (q and k carry rotary pairs, so their row order matters).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

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


def save_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A LlamaForCausalLM with random weights, saved in float32 with its config.json."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        vocab_size=100,
        tie_word_embeddings=False,
    )
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


def save_tiny_phi3(folder: Path, seed: int = 0) -> Path:
    """A Phi3ForCausalLM with random weights, saved in float32 with its config.json."""
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    config = Phi3Config(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=PHI3_KV_HEADS,
        vocab_size=100,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    Phi3ForCausalLM(config).save_pretrained(str(folder))
    return folder


def phi3_weight(folder: Path, layer: int, role: str) -> np.ndarray:
    """The float64 rows (d_out, d_in) of one role of the saved Phi-3, cut by hand."""
    from safetensors.numpy import load_file

    module, start, end = PHI3_ROWS[role]
    name = f"model.layers.{layer}.{module}.weight"
    return load_file(str(folder / "model.safetensors"))[name].astype(np.float64)[start:end]
