"""A small built-in example in real on-disk formats, for ``spectra demo``.

``write_demo_checkpoints(folder)`` writes, with a fixed seed and without
peft or transformers:

- ``base/``: a LLaMA-shaped model (4 layers, hidden 256, grouped-query
  attention with k/v projections of shape (64, 256)) as a Hugging Face
  folder (``config.json`` + ``model.safetensors``);
- ``ft/``: the same model after a simulated full fine-tune whose update has a
  broad, slowly decaying spectrum (σ_i ∝ i^-1/2, full rank);
- ``lora/``: a PEFT LoRA adapter folder (``adapter_config.json`` +
  ``adapter_model.safetensors``, PEFT's key names) with r = 8, α = 16 on
  k_proj and v_proj, whose update is dominated by a few directions
  (σ_i ∝ 2^-i within the rank);
- ``multilora.pt``: a MultiLoRA checkpoint in the reference layout (n = 4
  heads of rank 2, the same total rank 8, α = 16), whose random factors and
  scaling vectors spread the update evenly over its 8 directions.

The FT and LoRA spectra are planted by construction (random orthonormal bases
times chosen singular values), so the demo shows the contrast the MultiLoRA
paper describes: FT and MultiLoRA updates spread over many directions, a
LoRA update led by a few.

``run_demo(out)`` is ``spectra demo``: it writes the checkpoints to
``out/checkpoints/``, compares them and saves the comparison (reports,
``summary.csv``, the figures) to ``out/comparison/``. The demo owns its
folder: one it made before (the ``spectra-demo.json`` marker, or the layout
of a demo made before the marker) is redone; a folder of anything else is
never touched.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import __version__
from ..io.atomic import check_output, write_safetensors

__all__ = [
    "DEMO_LORA_ALPHA",
    "DEMO_MARKER",
    "DEMO_SHAPE",
    "findings",
    "run_demo",
    "write_demo_checkpoints",
]

DEMO_MARKER = "spectra-demo.json"  # written into the demo's folder: the folder is the demo's

DEMO_SHAPE = {"layers": 4, "hidden": 256, "heads": 8, "kv_heads": 2, "intermediate": 512}
_LORA_RANK, _LORA_ALPHA = 8, 16
DEMO_LORA_ALPHA = _LORA_ALPHA  # α of the LoRA and MultiLoRA examples
_MULTILORA_HEADS, _MULTILORA_RANK = 4, 2


def _orthonormal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q  # (rows, cols), orthonormal columns


def _planted(
    d_out: int, d_in: int, sigma: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """A (d_out, d_in) matrix with singular values ``sigma`` and random singular vectors."""
    k = sigma.numel()
    U = _orthonormal(d_out, k, generator)  # (d_out, k)
    V = _orthonormal(d_in, k, generator)  # (d_in, k)
    return (U * sigma) @ V.T  # (d_out, d_in)


def _base_weights(generator: torch.Generator) -> dict[str, torch.Tensor]:
    hidden, inter = DEMO_SHAPE["hidden"], DEMO_SHAPE["intermediate"]
    kv = hidden // DEMO_SHAPE["heads"] * DEMO_SHAPE["kv_heads"]
    shapes = {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (kv, hidden),
        "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }
    weights = {"model.embed_tokens.weight": 0.02 * torch.randn(1000, hidden, generator=generator)}
    for layer in range(DEMO_SHAPE["layers"]):
        for module, shape in shapes.items():
            name = f"model.layers.{layer}.{module}.weight"
            weights[name] = 0.02 * torch.randn(*shape, generator=generator)
    return weights


def _config() -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": DEMO_SHAPE["hidden"],
        "intermediate_size": DEMO_SHAPE["intermediate"],
        "num_hidden_layers": DEMO_SHAPE["layers"],
        "num_attention_heads": DEMO_SHAPE["heads"],
        "num_key_value_heads": DEMO_SHAPE["kv_heads"],
        "vocab_size": 1000,
        "torch_dtype": "float32",
    }


def _write_model(folder: Path, weights: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(_config(), indent=2) + "\n")
    tensors = {name: tensor.float().contiguous() for name, tensor in weights.items()}
    write_safetensors(folder / "model.safetensors", tensors, {"format": "pt"})


def write_demo_checkpoints(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write ``base/``, ``ft/``, ``lora/`` and ``multilora.pt`` under ``folder``.

    Returns their paths by name.
    """
    folder = Path(folder)
    generator = torch.Generator().manual_seed(seed)
    base = _base_weights(generator)
    tuned = dict(base)
    adapter: dict[str, torch.Tensor] = {}
    for layer in range(DEMO_SHAPE["layers"]):
        for module in ("k_proj", "v_proj"):
            name = f"model.layers.{layer}.self_attn.{module}"
            d_out, d_in = base[f"{name}.weight"].shape
            n = min(d_out, d_in)
            # Full fine-tune: every direction moves, slowly decaying strengths.
            ft_sigma = 0.05 * torch.arange(1, n + 1, dtype=torch.float64) ** -0.5
            tuned[f"{name}.weight"] = (
                base[f"{name}.weight"] + _planted(d_out, d_in, ft_sigma, generator).float()
            )
            # LoRA: rank 8, each direction half as strong as the one before.
            lora_sigma = 0.05 * 2.0 ** -torch.arange(_LORA_RANK, dtype=torch.float64)
            delta = _planted(d_out, d_in, lora_sigma, generator) / (_LORA_ALPHA / _LORA_RANK)
            U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
            B = U[:, :_LORA_RANK] * S[:_LORA_RANK].sqrt()  # (d_out, r)
            A = S[:_LORA_RANK].sqrt()[:, None] * Vh[:_LORA_RANK]  # (r, d_in)
            adapter[f"base_model.model.{name}.lora_A.weight"] = A.float().contiguous()
            adapter[f"base_model.model.{name}.lora_B.weight"] = B.float().contiguous()
    paths = {
        "base": folder / "base",
        "ft": folder / "ft",
        "lora": folder / "lora",
        "multilora": folder / "multilora.pt",
    }
    _write_model(paths["base"], base)
    _write_model(paths["ft"], tuned)
    paths["lora"].mkdir(parents=True, exist_ok=True)
    write_safetensors(paths["lora"] / "adapter_model.safetensors", adapter, {"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(paths["base"].resolve()),
        "r": _LORA_RANK,
        "lora_alpha": _LORA_ALPHA,
        "lora_dropout": 0.0,
        "target_modules": ["k_proj", "v_proj"],
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "bias": "none",
        "rank_pattern": {},
        "alpha_pattern": {},
        "init_lora_weights": True,
    }
    (paths["lora"] / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.save(_multilora_state(base, generator), paths["multilora"])
    return paths


def _multilora_state(base: dict[str, torch.Tensor], generator: torch.Generator) -> dict:
    """MultiLoRA's reference layout: stacked lora_A, lora_B, lora_scaling per module."""
    n, r = _MULTILORA_HEADS, _MULTILORA_RANK
    state = {}
    for layer in range(DEMO_SHAPE["layers"]):
        for module in ("k_proj", "v_proj"):
            name = f"model.layers.{layer}.self_attn.{module}"
            d_out, d_in = base[f"{name}.weight"].shape
            state[f"{name}.weight"] = base[f"{name}.weight"]  # the frozen base sits alongside
            state[f"{name}.lora_A"] = torch.randn(n, r, d_in, generator=generator) / d_in**0.5
            state[f"{name}.lora_B"] = 0.05 * torch.randn(n, d_out, r, generator=generator)
            state[f"{name}.lora_scaling"] = 1.0 + 0.1 * torch.randn(n, d_out, generator=generator)
    return state


def _is_demo_folder(out: Path) -> bool:
    """Whether ``out`` is a folder the demo made: its marker, or an earlier version's layout."""
    earlier = (out / "checkpoints" / "base" / "config.json").is_file() and (
        out / "comparison" / "summary.csv"
    ).is_file()
    return (out / DEMO_MARKER).is_file() or earlier


def run_demo(out: str | Path = "spectra-demo", progress=None):
    """Write the example checkpoints under ``out``, compare them, save the comparison.

    Returns ``(paths, comparison)``. ``progress`` is ``compare``'s. See the
    module docstring for which folders the demo may write into.
    """
    from ..analysis import compare

    out = Path(out)
    _claim(out)
    paths = write_demo_checkpoints(out / "checkpoints")
    comparison = compare(
        [paths["ft"], paths["lora"], paths["multilora"]],
        ["FT", "LoRA", "MultiLoRA"],
        base=paths["base"],
        lora_alpha=DEMO_LORA_ALPHA,
        progress=progress,
    )
    comparison.save(out / "comparison", force=True)
    return paths, comparison


def findings(comparison) -> str:
    """What the comparison measured, in words: each method's means and their ordering.

    Per method, the mean over its rows of normalized entropy, of effective
    rank against the directions the update can use (the adapter rank, or
    n = min(d_out, d_in) for a dense ΔW) and of the top direction's share of
    ‖ΔW‖_F²; then which method is the most balanced (normalized entropy), which
    fills its directions most evenly and which leans most on one direction.
    Every word comes from the numbers, so it stays true whatever is compared.
    """
    pairs = zip(comparison.labels, comparison.reports, strict=True)
    measured = {label: _means(report) for label, report in pairs}
    entropy = sorted(measured, key=lambda label: -measured[label]["entropy"])
    parts = [f"{label} {measured[label]['entropy']:.2f}" for label in entropy]
    used = [
        f"{label} {m['rank']:.1f}/{m['directions']:.0f} ({_filled(m):.0%})"
        for label, m in measured.items()
    ]
    top = [f"{label} {m['top']:.0%}" for label, m in measured.items()]
    fullest = max(measured, key=lambda label: _filled(measured[label]))
    leaning = max(measured, key=lambda label: measured[label]["top"])
    return (
        f"Measured (means over layers and modules): normalized entropy, highest first, "
        f"{', '.join(parts)}; effective rank out of the directions each can use "
        f"{', '.join(used)}; the top direction's share of ‖ΔW‖_F² {', '.join(top)}. "
        f"{entropy[0]} is the most balanced, {fullest} fills its own directions most "
        f"evenly, {leaning} leans most on one direction."
    )


def _filled(means: dict[str, float]) -> float:
    """Effective rank over the directions the update can use."""
    return means["rank"] / means["directions"]


def _means(report) -> dict[str, float]:
    """A report's mean normalized entropy, effective rank, usable directions and top-1 share."""
    rows = report.rows

    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values)

    return {
        "entropy": mean(float(row["normalized_entropy"]) for row in rows),
        "rank": mean(float(row["effective_rank"]) for row in rows),
        "directions": mean(
            float(row["adapter_rank"] or min(row["d_out"], row["d_in"])) for row in rows
        ),
        "top": mean(float(row["top_share@1"]) for row in rows),
    }


def _claim(out: Path) -> None:
    """Make ``out`` the demo's folder, refusing one that holds anything else.

    The demo redoes a folder it made without being asked (``force`` always),
    through the one rule of every writer (``io.atomic.check_output``).
    """
    check_output(out, True, "demo folder", _is_demo_folder)
    out.mkdir(parents=True, exist_ok=True)
    marker = {"spectra_version": __version__, "what": "spectra demo: example checkpoints"}
    (out / DEMO_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
