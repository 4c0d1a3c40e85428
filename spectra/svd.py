"""Singular values of a ``LayerDelta``, on the GPU when there is one.

Two paths, chosen by the kind of update:

- ``Factored`` (ΔW = s·B@A): B = Q_b R_b and Aᵀ = Q_a R_a, so
  ΔW = s · Q_b (R_b R_aᵀ) Q_aᵀ and σ(ΔW) = |s| · σ(R_b R_aᵀ), an r×r problem.
  ΔW is never merged. Computed in float64, where the only error is that of a
  backward-stable QR and SVD: about ``max(d) · ε₆₄ · σ_1`` absolute.
- ``Dense``: two methods.
  ``"fast"`` (default) takes the eigenvalues of the float64 Gram matrix of
  the smaller side (ΔWᵀΔW or ΔWΔWᵀ; on the CPU only the triangle
  ``eigvalsh`` reads is formed, half the flops). Squaring makes the
  relative error of σ_i about ½·ε₆₄·(σ_1/σ_i)²: ~1e-6 for σ_i ≥ 1e-5·σ_1,
  ~1e-8 at 1e-4·σ_1, growing below; values under ``σ_1·√(max(d)·ε₆₄)`` are
  noise.
  ``"exact"`` is a float64 SVD (``torch.linalg.svdvals``), backward stable:
  absolute error about ``max(d)·ε₆₄·σ_1`` on every value.

``singular_values_stream`` decomposes a stream of deltas, overlapping reading
with computing: on the CPU, ``jobs`` modules are decomposed side by side on
``threads // jobs`` threads each (two by default: the eigensolvers do not
scale with threads, so two at once give more throughput); on a GPU, the next
modules are read on a background thread and same-shaped dense matrices are
decomposed in batches.

Everything returns a float64 CPU tensor sorted in descending order, of length
``min(d_out, d_in)`` for dense updates and ``min(r, d_out, d_in)`` for
factored ones (the remaining singular values are exact zeros; metrics count
them through the shape).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch

from .arguments import DEVICE, JOBS, SKIP_NONFINITE
from .delta import Dense, Factored, LayerDelta
from .errors import DeviceError, NonFiniteError, SpectraError
from .io.workers import ordered_map, read_ahead

__all__ = [
    "METHODS",
    "accuracy_floor",
    "all_finite",
    "check_finite",
    "check_method",
    "default_jobs",
    "dense_gram_batched",
    "finite_only",
    "resolve_device",
    "singular_values",
    "singular_values_stream",
]

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
            f"unknown device {device!r}: expected auto, cpu or cuda[:N] ({DEVICE})"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device {device!r} asked for, but this PyTorch ({torch.__version__}) sees no CUDA "
            f"GPU; use {DEVICE('cpu')} or {DEVICE('auto')}"
        )
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {device!r} is not supported: use {DEVICE('auto')}, cpu or cuda")
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
    delta: LayerDelta | Dense | Factored | torch.Tensor,
    device: str | torch.device = "auto",
    method: str = "fast",
) -> torch.Tensor:
    """Singular values of ΔW, descending, as a float64 CPU tensor.

    ``delta`` is a ``LayerDelta``, a ``Dense`` or ``Factored`` update, or a
    2-D tensor holding ΔW itself (read as ``Dense``; any float dtype, taken
    in float64). ``method`` applies to dense updates only (``"fast"`` or
    ``"exact"``, see the module docstring for their accuracy); factored
    updates always take the exact QR-core path, which is both faster and exact.

    Args:
        delta: ΔW: a ``LayerDelta``, a ``Dense`` or ``Factored`` update, or a
            2-D floating-point tensor ``(d_out, d_in)``.
        device: where to decompose: ``"auto"`` (the default: CUDA when
            PyTorch sees a GPU, else the CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``.
        method: ``"fast"`` (the default: eigenvalues of the float64 Gram
            matrix) or ``"exact"`` (float64 SVD), for dense updates only.

    Returns:
        σ, a float64 CPU tensor in descending order, of length
        ``min(d_out, d_in)`` for a dense ΔW and ``min(r, d_out, d_in)`` for a
        factored one.

    Raises:
        SpectraError: a tensor that is not 2-D floating point, or an unknown
            ``method``.
        NonFiniteError: ΔW holds NaN or Inf.
        DeviceError: the device asked for is not available.

    Example:
        >>> import torch
        >>> singular_values(torch.diag(torch.tensor([3.0, 4.0, 0.0])), device="cpu")
        tensor([4., 3., 0.], dtype=torch.float64)
        >>> ones = Factored(torch.ones(4, 1), torch.ones(1, 3), scale=0.5)  # 0.5·√12
        >>> singular_values(ones, device="cpu").tolist()  # the QR core, never merged
        [1.7320508075688772]
    """
    check_method(method)
    if isinstance(delta, torch.Tensor):
        delta = _tensor_update(delta)
    if isinstance(delta, LayerDelta):
        check_finite(delta)
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
        raise TypeError(
            f"expected a LayerDelta, Dense, Factored or 2-D tensor, got {type(update).__name__}"
        )
    return sigma.cpu()


def _tensor_update(matrix: torch.Tensor) -> Dense:
    """A tensor given as ΔW, checked: 2-D, floating point, finite."""
    if matrix.ndim != 2 or not matrix.is_floating_point():
        raise SpectraError(
            f"singular_values: expected ΔW as a 2-D floating-point tensor (d_out, d_in); got "
            f"{matrix.ndim}-D {str(matrix.dtype).removeprefix('torch.')} of shape "
            f"{tuple(matrix.shape)}: pass the matrix itself (tensor.reshape(d_out, -1) for a "
            "conv kernel)"
        )
    if not all_finite(matrix):
        raise NonFiniteError(
            "singular_values: the tensor holds NaN or Inf, so ΔW has no spectrum; pass a "
            "finite matrix"
        )
    return Dense(matrix)


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element of a float tensor is finite: one sum, elementwise only if need be.

    A sum is finite only if every term is (NaN and ±Inf propagate), so a
    finite sum settles it in one streaming pass; a sum that overflowed is
    checked element by element (``torch.isfinite`` builds an n² mask, ten
    times slower on a large ΔW).

    Example:
        >>> all_finite(torch.ones(3)), all_finite(torch.tensor([1.0, float("nan")]))
        (True, False)
    """
    if bool(torch.isfinite(tensor.sum(dtype=torch.float64))):
        return True
    return bool(torch.isfinite(tensor).all())


def check_finite(delta: LayerDelta) -> None:
    """Raise ``NonFiniteError`` naming the tensor if ΔW's data holds NaN or Inf."""
    update = delta.update
    tensors = (update.B, update.A) if isinstance(update, Factored) else (update.matrix,)
    if not all(all_finite(tensor) for tensor in tensors):
        raise NonFiniteError(
            f"{delta.name} (layer {delta.layer}, {delta.role}): the weights hold NaN or Inf, so "
            f"ΔW has no spectrum; re-export the checkpoint, or pass {SKIP_NONFINITE} to leave "
            "such modules out (the report then says which)"
        )


def finite_only(deltas: Iterable[LayerDelta], skipped: list[str]) -> Iterator[LayerDelta]:
    """Pass on the deltas whose weights are finite; record the others' keys in ``skipped``.

    What ``skip_nonfinite=True`` does, wherever the deltas are read (a local
    run, a Ray task).
    """
    for delta in deltas:
        try:
            check_finite(delta)
        except NonFiniteError:
            skipped.append(delta.key)
            continue
        yield delta


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
    if device.type != "cpu":
        return _gram_spectrum(M)  # (n,)
    gram = _lower_gram(M)  # (n, n), lower triangle only
    eigenvalues = torch.linalg.eigvalsh(gram, UPLO="L")  # (n,) ascending
    return eigenvalues.flip(-1).clamp_min(0.0).sqrt()


_GRAM_STRIP = 512  # rows of the Gram matrix formed per product
_GRAM_CHUNK = 1024  # columns of M per product: sums of at most this many terms


def _lower_gram(M: torch.Tensor) -> torch.Tensor:
    """The lower triangle of the smaller Gram matrix of ``M``, the only part eigvalsh reads.

    Formed in strips of rows: strip i is ``X[rows_i] @ X[:end_i]ᵀ``, so the
    products cover the lower triangle and the diagonal blocks, about half the
    flops of ``X @ Xᵀ`` at 4096² (like BLAS ``syrk``, but through torch's own
    BLAS, which honours the calling thread's thread count). Above the
    diagonal blocks the matrix is left zero.

    Each strip is the sum of separate products over ``_GRAM_CHUNK`` columns:
    MKL's dgemm accumulates a long inner dimension with errors that grow with
    its length, which at 4096² made σ at 1e-5·σ_1 five times less accurate
    (9.7e-7 relative, at the bound; OpenBLAS 1.9e-7); chunks of 1024 bring it
    to 1.5–1.7e-7 for about 5 % more time in the Gram.
    """
    X = M if M.shape[0] <= M.shape[1] else M.T  # (n, k), n = min(d_out, d_in)
    n, k = X.shape
    gram = torch.zeros(n, n, dtype=X.dtype)  # (n, n)
    product = None  # (strip, n), reused for the chunks after the first
    for start in range(0, n, _GRAM_STRIP):
        end = min(start + _GRAM_STRIP, n)
        strip = gram[start:end, :end]  # (rows, end), a view
        torch.mm(X[start:end, :_GRAM_CHUNK], X[:end, :_GRAM_CHUNK].T, out=strip)
        for first in range(_GRAM_CHUNK, k, _GRAM_CHUNK):
            if product is None:
                product = torch.empty(min(_GRAM_STRIP, n), n, dtype=X.dtype)
            part = product[: end - start, :end]  # (rows, end)
            columns = slice(first, first + _GRAM_CHUNK)
            torch.mm(X[start:end, columns], X[:end, columns].T, out=part)
            strip += part
    return gram


def _gram_spectrum(M: torch.Tensor) -> torch.Tensor:
    """σ of each float64 matrix in ``M`` ``(..., d_out, d_in)`` from its Gram matrix, descending."""
    Mt = M.transpose(-2, -1)  # (..., d_in, d_out)
    gram = M @ Mt if M.shape[-2] <= M.shape[-1] else Mt @ M  # (..., n, n), n = min(d_out, d_in)
    eigenvalues = torch.linalg.eigvalsh(gram)  # (..., n) ascending
    # Rounding can make eigenvalues of a PSD matrix slightly negative: those are zeros.
    return eigenvalues.flip(-1).clamp_min(0.0).sqrt()


def _dense_exact(matrix: torch.Tensor, device: torch.device) -> torch.Tensor:
    M = matrix.to(device=device, dtype=torch.float64)  # (d_out, d_in)
    return torch.linalg.svdvals(M)  # (min(d_out, d_in),) descending


def singular_values_stream(
    deltas: Iterable[LayerDelta],
    device: str | torch.device = "auto",
    method: str = "fast",
    *,
    prefetch: int = 1,
    batch_size: int | None = None,
    jobs: int | None = None,
) -> Iterator[tuple[LayerDelta, torch.Tensor]]:
    """Yield ``(delta, σ)`` for each delta, in order, overlapping reading with computing.

    On the CPU, ``jobs`` threads (default: 2, or 1 where torch has a single
    thread) each read the next delta and decompose it on
    ``torch.get_num_threads() // jobs`` threads; at most ``jobs`` modules are
    in memory besides the one the caller holds. With ``jobs=1``, or on a GPU,
    a background thread reads up to ``prefetch`` deltas ahead (``0`` reads in
    the calling thread) while one is decomposed, so at most ``prefetch + 2``
    modules are in memory. On a GPU, consecutive dense deltas of one shape
    are decomposed together in batches of ``batch_size`` (default 8; 1 on the
    CPU, where batching buys nothing). Results equal the one-at-a-time path:
    exactly for the same thread count, to rounding otherwise.
    """
    check_method(method)
    target = resolve_device(device)
    size = batch_size if batch_size is not None else (8 if target.type == "cuda" else 1)
    if size < 1:
        raise SpectraError(f"batch_size must be >= 1; got {size}")
    workers = default_jobs(target) if jobs is None else jobs
    if workers < 1:
        raise SpectraError(f"jobs must be >= 1; got {workers} ({JOBS})")
    if target.type == "cpu" and workers > 1:
        yield from _side_by_side(deltas, method, workers)
        return
    source = read_ahead(deltas, prefetch) if prefetch > 0 else iter(deltas)
    pending: list[LayerDelta] = []
    for delta in source:
        if pending and (len(pending) >= size or not _batchable(pending[0], delta, method)):
            yield from _flush(pending, target, method)
            pending = []
        pending.append(delta)
    yield from _flush(pending, target, method)


def default_jobs(device: torch.device) -> int:
    """Decompositions run side by side: 2 on a CPU with 2 or more threads, else 1."""
    return min(2, torch.get_num_threads()) if device.type == "cpu" else 1


def _side_by_side(
    deltas: Iterable[LayerDelta], method: str, jobs: int
) -> Iterator[tuple[LayerDelta, torch.Tensor]]:
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    per_job = max(1, threads // jobs)

    def setup() -> None:  # torch's thread count is per OpenMP thread: set it in each worker
        torch.set_num_threads(per_job)

    try:
        yield from ordered_map(
            lambda delta: singular_values(delta, cpu, method), deltas, jobs, setup=setup
        )
    finally:
        torch.set_num_threads(threads)  # the workers also set MKL's process-wide count


def _batchable(first: LayerDelta, delta: LayerDelta, method: str) -> bool:
    return (
        method == "fast"
        and isinstance(first.update, Dense)
        and isinstance(delta.update, Dense)
        and first.shape == delta.shape
    )


def _flush(
    pending: list[LayerDelta], device: torch.device, method: str
) -> Iterator[tuple[LayerDelta, torch.Tensor]]:
    if len(pending) == 1:
        yield pending[0], singular_values(pending[0], device, method)
    elif pending:
        for delta in pending:
            check_finite(delta)
        matrices = [delta.update.matrix for delta in pending]
        yield from zip(pending, dense_gram_batched(matrices, device), strict=True)


def dense_gram_batched(
    matrices: list[torch.Tensor], device: str | torch.device
) -> list[torch.Tensor]:
    """The fast (Gram) path for several same-shaped matrices at once; float64 CPU results."""
    target = resolve_device(device)
    stacked = [m.to(device=target, dtype=torch.float64) for m in matrices]
    M = torch.stack(stacked)  # (b, d_out, d_in)
    return list(_gram_spectrum(M).cpu().unbind(0))  # b × (n,)
