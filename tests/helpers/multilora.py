"""MultiLoRA and multi-head LoRA layers on MiniLM, trained a few steps, and their ΔW in numpy.

``spectra.examples.reference``'s layers wrap the real MiniLM's key and value
projections; ΔW is rebuilt from the saved tensors with the formula of
docs/formats.md ("MultiLoRA"), independently of spectra's loaders.
"""

from __future__ import annotations

import torch

from .models import MINILM_LAYERS, load_bert

HEADS, RANK, ALPHA = 3, 4, 8.0


def wrap_and_train(minilm_dir, module_class, steps=5, seed=0):
    """MiniLM with ``module_class`` (HEADS heads of rank RANK) on key and value, trained."""
    from spectra.examples.reference import wrap

    torch.manual_seed(seed)
    model = load_bert(minilm_dir)
    replaced = wrap(
        model, ["key", "value"], lambda linear: module_class(linear, HEADS, RANK, ALPHA)
    )
    assert len(replaced) == 2 * MINILM_LAYERS
    if steps:
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(parameters, lr=1e-2)
        ids = torch.randint(1000, 2000, (4, 12))
        target = torch.randn(4, 12, 384)
        for _ in range(steps):
            loss = (model(input_ids=ids).last_hidden_state - target).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def multilora_delta(state, prefix, per_head=False):
    """ΔW = Σ_i (α/r) · diag(c_i) B_i A_i in float64 numpy (or the list of heads)."""
    A = state[f"{prefix}.lora_A"].double().numpy()  # (n, r, d_in)
    B = state[f"{prefix}.lora_B"].double().numpy()  # (n, d_out, r)
    c = state[f"{prefix}.lora_scaling"].double().numpy()  # (n, d_out)
    heads = [(ALPHA / RANK) * (c[i][:, None] * B[i]) @ A[i] for i in range(len(A))]
    return heads if per_head else sum(heads)


def prefix_of(layer, role):
    """The state-dict prefix of a MiniLM role's wrapped layer."""
    return f"encoder.layer.{layer}.attention.self.{ {'k': 'key', 'v': 'value'}[role] }"


def cast_state(state: dict, dtype: torch.dtype) -> dict:
    """A state dict with its floating-point tensors cast to ``dtype``."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
