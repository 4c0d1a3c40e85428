"""Singular values of a ``LayerDelta``, on the GPU when there is one.

Two paths, chosen by the kind of update:

- ``Factored`` (ΔW = s·B@A): B = Q_b R_b and Aᵀ = Q_a R_a, so
  ΔW = s · Q_b (R_b R_aᵀ) Q_aᵀ and σ(ΔW) = |s| · σ(R_b R_aᵀ), an r×r problem.
  ΔW is never merged. Computed in float64, where the only error is that of a
  backward-stable QR and SVD: about ``max(d) · ε₆₄ · σ_1`` absolute.
- ``Dense``: two methods.
  ``"fast"`` (default) takes the eigenvalues of the float64 Gram matrix of
  the smaller side (ΔWᵀΔW or ΔWΔWᵀ). Squaring makes the relative error of
  σ_i about ½·ε₆₄·(σ_1/σ_i)²: ≤ 1e-6 for σ_i ≥ 1e-5·σ_1, ~1e-8 at
  1e-4·σ_1, growing below; values under ``σ_1·√(max(d)·ε₆₄)`` are noise.
  ``"exact"`` is a float64 SVD (``torch.linalg.svdvals``), backward stable:
  absolute error about ``max(d)·ε₆₄·σ_1`` on every value.

Everything returns a float64 CPU tensor sorted in descending order, of length
``min(d_out, d_in)`` for dense updates and ``min(r, d_out, d_in)`` for
factored ones (the remaining singular values are exact zeros; metrics count
them through the shape).
"""

from __future__ import annotations

import math

import torch

from .delta import Dense, Factored, LayerDelta
from .errors import DeviceError, SpectraError

__all__ = ["METHODS", "accuracy_floor", "check_method", "resolve_device", "singular_values"]

METHODS = ("fast", "exact")
_EPS64 = torch.finfo(torch.float64).eps


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a usable ``torch.device``.

    ``"auto"`` is CUDA when PyTorch sees a GPU, else the CPU. Asking for CUDA
    where there is none raises ``DeviceError`` instead of failing deep in torch.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise DeviceError(
            f"unknown device {device!r}: expected auto, cpu or cuda[:N] (--device)"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device {device!r} asked for, but this PyTorch ({torch.__version__}) sees no CUDA "
            "GPU; use --device cpu or --device auto"
        )
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {device!r} is not supported: use --device auto, cpu or cuda")
    return resolved


def accuracy_floor(shape: tuple[int, int], kind: str, method: str = "fast") -> float:
    """Relative size, against σ_1, below which computed singular values are noise.

    ``kind`` is ``"factored"`` or ``"dense"``. Backward-stable float64 paths
    (factored, dense exact) follow numpy's ``matrix_rank`` rule
    ``max(d) · ε₆₄``; the Gram path (dense fast) squares first, so its floor
    is ``√(max(d) · ε₆₄)``.
    """
    check_method(method)
    rule = max(shape) * _EPS64
    if kind == "dense" and method == "fast":
        return math.sqrt(rule)
    return rule


def singular_values(
    delta: LayerDelta | Dense | Factored,
    device: str | torch.device = "auto",
    method: str = "fast",
) -> torch.Tensor:
    """Singular values of ΔW, descending, as a float64 CPU tensor.

    ``method`` applies to dense updates only (``"fast"`` or ``"exact"``, see
    the module docstring for their accuracy); factored updates always take the
    exact QR-core path, which is both faster and exact.
    """
    check_method(method)
    update = delta.update if isinstance(delta, LayerDelta) else delta
    target = resolve_device(device)
    if isinstance(update, Factored):
        sigma = _factored(update, target)
    elif isinstance(update, Dense):
        sigma = (
            _dense_exact(update.matrix, target)
            if method == "exact"
            else _dense_gram(update.matrix, target)
        )
    else:
        raise TypeError(f"expected a LayerDelta, Dense or Factored, got {type(update).__name__}")
    return sigma.cpu()


def check_method(method: str) -> None:
    if method not in METHODS:
        raise SpectraError(f"unknown SVD method {method!r}: expected one of {', '.join(METHODS)}")


def _factored(update: Factored, device: torch.device) -> torch.Tensor:
    B = update.B.to(device=device, dtype=torch.float64)  # (d_out, r)
    A = update.A.to(device=device, dtype=torch.float64)  # (r, d_in)
    if B.shape[1] == 0 or B.shape[0] == 0 or A.shape[1] == 0:
        return torch.zeros(0, dtype=torch.float64)
    R_b = torch.linalg.qr(B, mode="r").R  # (min(d_out, r), r)
    R_a = torch.linalg.qr(A.T, mode="r").R  # (min(d_in, r), r)
    core = R_b @ R_a.T  # (min(d_out, r), min(d_in, r))
    return abs(update.scale) * torch.linalg.svdvals(core)


def _dense_gram(matrix: torch.Tensor, device: torch.device) -> torch.Tensor:
    M = matrix.to(device=device, dtype=torch.float64)  # (d_out, d_in)
    gram = M @ M.T if M.shape[0] <= M.shape[1] else M.T @ M  # (n, n), n = min(d_out, d_in)
    eigenvalues = torch.linalg.eigvalsh(gram)  # (n,) ascending
    # Rounding can make eigenvalues of a PSD matrix slightly negative: those are zeros.
    return eigenvalues.flip(0).clamp_min(0.0).sqrt()


def _dense_exact(matrix: torch.Tensor, device: torch.device) -> torch.Tensor:
    M = matrix.to(device=device, dtype=torch.float64)  # (d_out, d_in)
    return torch.linalg.svdvals(M)  # (min(d_out, d_in),) descending
