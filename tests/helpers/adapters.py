"""Real peft adapters on the packaged MiniLM, and their reference ΔW.

Adapters are made with real ``peft`` and saved in float32, bfloat16 or
float16; their reference ΔW is peft's own load of the saved tensors and
``merge_and_unload()`` in float64, minus the base weight.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .models import MINILM_LAYERS, ROLE_MODULES, bert_weight, load_bert


@dataclass
class Adapter:
    """A real PEFT adapter folder and its reference ΔW per (layer, role)."""

    path: Path
    reference: dict[tuple[int, str], np.ndarray]
    config: dict


def randomize_adapter(model, seed: int) -> None:
    """Give every trainable adapter tensor random values (many start at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            if "magnitude" in name:  # DoRA's magnitude: stay near the row norms of W0
                parameter.mul_(1.0 + 0.1 * noise)
            else:
                parameter.copy_(0.05 * noise)


def merged_reference(folder: Path, base: Path, adapter_name: str | None = None) -> dict:
    """peft's own load and merge in float64, minus the base weight, per (layer, role)."""
    from peft import PeftModel

    base_model = load_bert(base, torch.float64)
    originals = {
        (layer, role): bert_weight(base_model, layer, role)
        for layer in range(MINILM_LAYERS)
        for role in ROLE_MODULES
    }
    kwargs = {} if adapter_name is None else {"adapter_name": adapter_name}
    # .double(): the saved (maybe half-precision) tensors, widened exactly, merged in float64
    merged = (
        PeftModel.from_pretrained(base_model, str(folder), **kwargs).double().merge_and_unload()
    )
    return {
        key: bert_weight(merged, *key) - original
        for key, original in originals.items()
        if np.any(bert_weight(merged, *key) != original)
    }


def make_peft_adapter(
    folder: Path, base: Path, seed: int = 0, config=None, **lora_kwargs
) -> Adapter:
    """A real peft adapter with random weights, saved in float32, and its merged reference."""
    from peft import LoraConfig

    if config is None:
        defaults = {"r": 8, "lora_alpha": 16, "target_modules": ["key", "value"]}
        config = LoraConfig(**(defaults | lora_kwargs))
    return save_peft_adapter(random_peft_model(base, config, seed), folder, base)


def random_peft_model(base: Path, config, seed: int = 0):
    """``get_peft_model`` on the float32 MiniLM with random adapter weights."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(load_bert(base), config)
    randomize_adapter(model, seed)
    return model


def save_peft_adapter(
    model,
    folder: Path,
    base: Path,
    dtype: torch.dtype = torch.float32,
    safe_serialization: bool = True,
) -> Adapter:
    """Save a copy of a peft model cast to ``dtype`` (peft writes the tensors as held).

    The reference is peft's own float64 merge of the tensors read back from
    that file, so half-precision rounding is part of the reference.
    """
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
    model.save_pretrained(str(folder), safe_serialization=safe_serialization)
    config = model.peft_config["default"].to_dict()
    return Adapter(folder, merged_reference(folder, base), config)
