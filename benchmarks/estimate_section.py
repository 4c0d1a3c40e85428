"""Section f of ``benchmarks/run.py``: ``analyze --estimate`` against the default path.

End to end, on the same files in the same run: a full fine-tune whose ΔW are
dense with a power-law spectrum (σ_i = i^-0.6, random singular vectors),
written in float32 beside its base, analysed by the default path (float64
Gram eigenvalues of every σ) and by ``estimate=True`` (stochastic Lanczos
quadrature and block Krylov, ``spectra.analysis.estimated``). Two 8192²
modules (k and v of one layer) and one 16384² module; ``--quick`` uses
1024² and 2048². Each is estimated twice, with the default settings and
with ``EstimateSettings(steps=20)``. For each: the time ratio, and the effective rank's
deviation from the exact path's value in units of its stated error and in %
(goals: ≥ 5× at 8192², ≥ 20× at 16384², within 3 errors and 5 %).

ΔW = H_1 diag(σ) H_2 with H each a product of four Householder reflections
of random dense vectors: dense, orthogonal factors, its spectrum exactly σ,
and made in O(n²) per reflection where a QR of a random 16384² matrix would
take minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file

import spectra
from spectra.analysis.estimated import EstimateSettings


def _reflect_rows(matrix: torch.Tensor, generator: torch.Generator, count: int) -> torch.Tensor:
    """``H matrix`` for H a product of ``count`` random Householder reflections, in place."""
    n = matrix.shape[0]
    for _ in range(count):
        v = torch.randn(n, 1, generator=generator, dtype=matrix.dtype)  # (n, 1)
        v /= v.norm()
        matrix -= 2.0 * v @ (v.T @ matrix)  # (n, d)
    return matrix


def power_law_delta(n: int, seed: int, exponent: float = 0.6) -> torch.Tensor:
    """A dense n × n float32 ΔW with σ_i = 0.01·i^-exponent (exactly) and dense factors."""
    generator = torch.Generator().manual_seed(seed)
    sigma = 0.01 * torch.arange(1, n + 1, dtype=torch.float32) ** -exponent  # (n,)
    delta = torch.diag(sigma)  # (n, n)
    delta = _reflect_rows(delta, generator, 4)  # H_1 diag(σ)
    delta = _reflect_rows(delta.T.contiguous(), generator, 4).T.contiguous()  # … H_2
    return delta


def make_dense_finetune(cache: Path, n: int, roles: tuple[str, ...]) -> tuple[Path, Path]:
    """A base and a tuned LLaMA-named model: ``roles`` of layer 0, n × n, float32."""
    folders = (cache / f"est-base-{n}-{len(roles)}", cache / f"est-tuned-{n}-{len(roles)}")
    if all((f / "model.safetensors").is_file() for f in folders):
        return folders
    base_tensors, tuned_tensors = {}, {}
    for index, role in enumerate(roles):
        key = f"model.layers.0.self_attn.{role}_proj.weight"
        generator = torch.Generator().manual_seed(100 + index)
        base = 0.02 * torch.randn(n, n, generator=generator)  # (n, n) float32
        base_tensors[key] = base
        tuned_tensors[key] = base + power_law_delta(n, seed=index)
    for folder, tensors in zip(folders, (base_tensors, tuned_tensors), strict=True):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(
            json.dumps({"model_type": "llama", "num_attention_heads": 32})
        )
    return folders


# The default estimate, and a lighter one (20 Gauss nodes instead of 30) measured beside it.
SETTINGS = (
    ("default (16 probes, 30 nodes)", True),
    ("steps=20", EstimateSettings(steps=20)),
)


def _timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def section_f(quick: bool, cache: Path) -> list[dict]:
    """``analyze --estimate`` against the default path, end to end, on power-law ΔW."""
    cases = [(1024, ("k", "v")), (2048, ("k",))] if quick else [(8192, ("k", "v")), (16384, ("k",))]
    rows = []
    for n, roles in cases:
        base, tuned = make_dense_finetune(cache, n, roles)
        modules = ",".join(roles)
        load = os.getloadavg()[0]
        run = partial(spectra.analyze, tuned, base=base, modules=modules, device="cpu")
        t_exact, exact = _timed(run)
        for label, settings in SETTINGS:
            t_estimate, estimate = _timed(partial(run, estimate=settings))
            for truth, guess in zip(exact.rows, estimate.rows, strict=True):
                deviation = abs(guess["effective_rank"] - truth["effective_rank"])
                error = guess["effective_rank_err"]
                in_errors = deviation / error if error > 0 else float("inf")
                rows.append(
                    {
                        "case": f"analyze FT {truth['role']} {n}x{n} f32, power-law ΔW",
                        "settings": label,
                        "modules_in_run": len(roles),
                        "exact_s": t_exact,
                        "estimate_s": t_estimate,
                        "ratio": t_exact / t_estimate,
                        "effective_rank_exact": truth["effective_rank"],
                        "effective_rank_estimate": guess["effective_rank"],
                        "effective_rank_err": error,
                        "deviation_in_errors": in_errors,
                        "deviation_percent": 100 * deviation / truth["effective_rank"],
                        "stable_rank_deviation_percent": 100
                        * abs(guess["stable_rank"] - truth["stable_rank"])
                        / truth["stable_rank"],
                        "load_1min_before": load,
                    }
                )
    return rows
