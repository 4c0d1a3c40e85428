"""MultiLoRA and multi-head LoRA layers on MiniLM, trained a few steps, and their ΔW in numpy.

``spectra.examples.reference``'s layers wrap the real MiniLM's key and value
projections; ΔW is rebuilt from the saved tensors with the formula of
docs/formats.md ("MultiLoRA"), independently of spectra's loaders. For head
diversity, files with planted heads (``save_planted_multilora``,
``save_planted_hydra``), each head's factors as saved, and the measures by
their definitions in dense numpy (``reference_heads``).
"""

from __future__ import annotations

import numpy as np
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


# ------------------------------------------- planted heads (head diversity, no training)


def save_planted_multilora(path, heads: dict, dtype: torch.dtype = torch.float32) -> dict:
    """A MultiLoRA ``.pt`` (reference layout) with chosen heads; the state dict as saved.

    ``heads`` maps ``(layer, role)`` to float64 numpy ``(A (n, r, d_in), B (n, d_out, r),
    c (n, d_out))``; the tensors are saved in ``dtype`` under ``prefix_of(layer, role)``.
    """
    state = {}
    for (layer, role), (A, B, c) in heads.items():
        prefix = prefix_of(layer, role)
        for part, value in (("lora_A", A), ("lora_B", B), ("lora_scaling", c)):
            state[f"{prefix}.{part}"] = torch.tensor(value).to(dtype)
    torch.save(state, path)
    return torch.load(path, weights_only=True)


def save_planted_hydra(folder, heads: dict, dtype: torch.dtype = torch.float32) -> dict:
    """A HydraLoRA (multi-head PEFT LoRA) folder with chosen heads; the tensors as saved.

    ``heads`` maps ``(layer, role)`` to float64 numpy ``(A (r, d_in), [B_0 … B_{n-1}]
    (d_out, r) each)``; all modules have the same n and r. Saved as
    ``adapter_model.safetensors`` in ``dtype`` with ``lora_nums = n``, r = RANK's
    shape, α = ALPHA.
    """
    import json

    from safetensors.torch import load_file, save_file

    state, count, rank = {}, None, None
    for (layer, role), (A, Bs) in heads.items():
        prefix = f"base_model.model.{prefix_of(layer, role)}"
        state[f"{prefix}.lora_A.weight"] = torch.tensor(A).to(dtype)
        for j, B in enumerate(Bs):
            state[f"{prefix}.lora_B{j}.weight"] = torch.tensor(B).to(dtype)
        count, rank = len(Bs), A.shape[0]
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": ALPHA,
        "lora_nums": count,
        "target_modules": ["key", "value"],
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return load_file(folder / "adapter_model.safetensors")


def hydra_factors(state: dict, layer: int, role: str) -> tuple[list, list, float]:
    """Each head's (B_j, A) of a saved HydraLoRA module, float64 numpy, and its scale α/r."""
    prefix = f"base_model.model.{prefix_of(layer, role)}"
    A = state[f"{prefix}.lora_A.weight"].double().numpy()  # (r, d_in)
    count = sum(name.startswith(f"{prefix}.lora_B") for name in state)
    ups = [state[f"{prefix}.lora_B{j}.weight"].double().numpy() for j in range(count)]
    return ups, [A] * len(ups), ALPHA / A.shape[0]


def multilora_factors(state: dict, layer: int, role: str) -> tuple[list, list, float]:
    """Each head's (diag(c_i) B_i, A_i) of a saved MultiLoRA module, float64 numpy, and α/r."""
    prefix = prefix_of(layer, role)
    A = state[f"{prefix}.lora_A"].double().numpy()  # (n, r, d_in)
    B = state[f"{prefix}.lora_B"].double().numpy()  # (n, d_out, r)
    c = state[f"{prefix}.lora_scaling"].double().numpy()  # (n, d_out)
    return [c[i][:, None] * B[i] for i in range(len(A))], list(A), ALPHA / A.shape[1]


def reference_heads(ups: list, downs: list, scale: float, k: int = 8) -> dict:
    """Head diversity by its definitions, in dense float64 numpy (independent of spectra).

    ``cosine``: of the flattened ups; ``delta_cosine``: of the flattened
    ΔW_j = scale·up_j@down_j; ``subspace``: ‖U_aᵀU_b‖²_F / min(k_a, k_b) of the
    top-k left singular vectors (k cut to numpy's matrix_rank); ``shares``:
    ‖ΔW_j‖²_F / Σ‖ΔW_i‖²_F. NaN where a vector is zero.
    """
    deltas = [scale * up @ down for up, down in zip(ups, downs, strict=True)]

    def cosines(vectors):
        flat = np.stack([v.ravel() for v in vectors])
        gram = flat @ flat.T
        norms = np.sqrt(np.diag(gram))
        with np.errstate(divide="ignore", invalid="ignore"):
            return gram / np.outer(norms, norms)

    bases = []
    for delta in deltas:
        U, S, _ = np.linalg.svd(delta, full_matrices=False)
        tolerance = S[0] * max(delta.shape) * np.finfo(float).eps  # numpy's matrix_rank rule
        rank = int(np.sum(tolerance < S)) if S[0] > 0 else 0
        bases.append(U[:, : min(k, rank)])
    subspace = np.full((len(bases), len(bases)), np.nan)
    for a, Ua in enumerate(bases):
        for b, Ub in enumerate(bases):
            if min(Ua.shape[1], Ub.shape[1]):
                subspace[a, b] = np.sum((Ua.T @ Ub) ** 2) / min(Ua.shape[1], Ub.shape[1])
    energy = np.array([np.sum(delta**2) for delta in deltas])
    return {
        "cosine": cosines(ups),
        "delta_cosine": cosines(deltas),
        "subspace": subspace,
        "shares": energy / energy.sum(),
    }
