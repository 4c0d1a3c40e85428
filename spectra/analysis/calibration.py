"""How fast this machine runs each step of an analysis: measured once, cached, reused.

The plan of an analysis (``analysis.plan``) predicts its time from flop
counts; this module supplies the rates. ``calibrate(device)`` times the
operations the decomposition paths of ``spectra.svd`` are made of, each at
two or three sizes on the threads one job gets (``threads // jobs``, as
``singular_values_stream`` runs them), and fits one rate per operation as
``Σ flops / Σ seconds`` over the sizes (the largest size dominates), so a
prediction scales as the operation's flop count (n³ for the cubic ones):

- ``gram``: the float64 Gram product of the smaller side (``svd._lower_gram``
  on the CPU, the lower triangle only: n²k flops; ``X @ Xᵀ`` on a GPU: 2n²k);
- ``eigvalsh``: the eigenvalues of a symmetric n×n matrix (4n³/3 flops, the
  tridiagonal reduction);
- ``svd``: ``torch.linalg.svdvals`` of an m×n matrix, m ≥ n (4mn² − 4n³/3);
- ``qr``: the R of a tall m×r matrix (2mr² − 2r³/3);
- ``thin``: products of an n×n matrix and of its transpose with a block of
  16 columns, ``Mᵀ(M X)`` taken as the estimate takes them, in ΔW's memory
  order (2·2n²·16; the estimate path is made of these), on all threads,
  since the estimate takes one module at a time;
- ``read``: bytes per second of reading a safetensors file (from the page
  cache: a cold disk is slower) into float64.

The result is stored as JSON in ``<cache folder>/calibration/`` (the folder
of ``analysis.cache.default_folder()``), one file per machine key: CPU model,
thread count, jobs, torch version and device (the GPU's name). A key seen
before is never measured again unless ``recalibrate=True``; the key holds
``BENCHMARKS``, the version of these benchmarks, so a cache measured the
way an older spectra measured is measured again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..metrics.estimate import DEFAULT_PROBES
from ..metrics.lanczos import gram_product
from ..svd import _lower_gram, default_jobs, resolve_device
from .cache import default_folder

__all__ = ["OPERATIONS", "Calibration", "calibrate", "calibration_key", "flops"]

OPERATIONS = ("gram", "eigvalsh", "svd", "qr", "thin", "read")
THIN_COLUMNS = DEFAULT_PROBES  # columns of the block in the ``thin`` benchmark
BENCHMARKS = 2  # the version of the benchmarks below, part of the cache key
# Timed on all threads, not one job's: ``analyze --estimate`` takes one module at a time.
ALL_THREADS = ("thin",)
# Sizes n of each benchmark: a few seconds in all on one thread of a 2-core machine.
SIZES = {
    "gram": (1024, 2048, 3072),
    "eigvalsh": (1024, 1536, 2048),
    "svd": (256, 512, 1024),
    "qr": (256, 512, 1024),  # a (8n, n/4) matrix
    "thin": (2048, 4096),
    "read": (1024, 2048),  # a float32 (n, n) file
}
TINY = {name: (16, 32) for name in OPERATIONS}  # for tests: milliseconds, rates meaningless


def flops(operation: str, m: int, n: int, k: int = 0, *, full_gram: bool = False) -> float:
    """The flop count (bytes for ``read``) of one operation, as the calibration counts it.

    Args:
        operation: one of ``OPERATIONS``.
        m, n: the sizes: ``gram`` of an n×m matrix (n ≤ m, so an n×n Gram);
            ``eigvalsh`` of n×n (m ignored); ``svd`` of m×n; ``qr`` of m×n;
            ``thin`` an m×n matrix times a block of ``k`` columns; ``read``
            m·n elements of ``k`` bytes each.
        k: the block's columns (``thin``) or bytes per element (``read``).
        full_gram: ``gram`` forms the whole Gram (a GPU) rather than its lower triangle.

    Returns:
        The count, a float.

    Example:
        >>> flops("eigvalsh", 0, 3000) / flops("eigvalsh", 0, 1500)
        8.0
    """
    small, large = min(m, n), max(m, n)
    if operation == "gram":
        return (2.0 if full_gram else 1.0) * small * small * large
    if operation == "eigvalsh":
        return 4.0 * n**3 / 3.0
    if operation == "svd":
        return 4.0 * large * small**2 - 4.0 * small**3 / 3.0
    if operation == "qr":
        return max(2.0 * large * small**2 - 2.0 * small**3 / 3.0, 1.0)
    if operation == "thin":
        return 2.0 * m * n * k
    if operation == "read":
        return float(m) * n * k
    raise ValueError(f"unknown operation {operation!r}: expected one of {', '.join(OPERATIONS)}")


@dataclass
class Calibration:
    """The measured rate of each operation on one device of one machine.

    Args:
        key: what names the machine: cpu, threads, jobs, torch, device.
        rates: operation → flops per second (bytes per second for ``read``).
        jobs: decompositions run side by side (``svd.default_jobs``).
        threads: torch threads each job runs on.
        source: ``"measured"`` (now), ``"cached"`` (read back) or
            ``"assumed"`` (typed in, e.g. a GPU that is not here).
        seconds: how long the measurement took.
        samples: operation → ``[[n, seconds], …]`` as measured.

    Example:
        >>> c = Calibration({"device": "cpu"}, {"eigvalsh": 2e10}, jobs=1, threads=1)
        >>> round(c.seconds_of("eigvalsh", 0, 4096), 2)
        4.58
    """

    key: dict[str, object]
    rates: dict[str, float]
    jobs: int
    threads: int
    source: str = "assumed"
    seconds: float = 0.0
    samples: dict[str, list[list[float]]] = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name} {rate / 1e9:.3g} G/s" for name, rate in self.rates.items())
        return f"Calibration({self.key.get('device')}, {self.source}, {self.jobs} jobs: {shown})"

    def seconds_of(self, operation: str, m: int, n: int, k: int = 0, **options: bool) -> float:
        """Predicted seconds of one operation (``flops`` / its rate)."""
        return flops(operation, m, n, k, **options) / self.rates[operation]

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (what the cache file holds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        """The calibration a ``to_dict()`` wrote."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def calibration_key(device: torch.device, jobs: int) -> dict[str, object]:
    """What names a machine for its calibration: CPU model, threads, jobs, torch, device."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "jobs": jobs,
        "torch": torch.__version__,
        "device": gpu or device.type,
        "benchmarks": BENCHMARKS,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def calibrate(
    device: str | torch.device = "cpu",
    *,
    recalibrate: bool = False,
    folder: str | os.PathLike | None = None,
    sizes: dict[str, Sequence[int]] | None = None,
) -> Calibration:
    """The rates of this machine's device, measured once and then read from the cache.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        recalibrate: measure again even when the cache holds this machine's key.
        folder: the cache folder; ``None`` (the default): that of the report
            cache (``$SPECTRA_CACHE``, else ``$XDG_CACHE_HOME/spectra``, else
            ``~/.cache/spectra``).
        sizes: operation → the sizes to time (``TINY`` for tests); ``None``
            (the default): ``SIZES``, a few seconds in all. Different sizes
            are a different cache entry.

    Returns:
        A ``Calibration`` whose ``source`` says whether it was measured now.

    Example::

        rates = calibrate("cpu")      # a few seconds the first time, then read back
        rates.seconds_of("eigvalsh", 0, 8192)
    """
    target = resolve_device(device)
    jobs = default_jobs(target)
    sizes = dict(sizes or SIZES)
    key = calibration_key(target, jobs)
    if sizes != SIZES:
        key["sizes"] = {name: list(value) for name, value in sizes.items()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    file = Path(folder or default_folder()) / "calibration" / f"{digest}.json"
    if not recalibrate and file.is_file():
        try:
            found = Calibration.from_dict(json.loads(file.read_text()))
            found.source = "cached"
            return found
        except (OSError, ValueError, TypeError, KeyError):
            pass  # a damaged entry is measured again
    calibration = _measure(target, jobs, sizes, key)
    file.parent.mkdir(parents=True, exist_ok=True)
    staging = file.with_name(f".{file.name}.{os.getpid()}")
    staging.write_text(json.dumps(calibration.to_dict(), indent=1))
    os.replace(staging, file)
    return calibration


def _measure(
    device: torch.device, jobs: int, sizes: dict[str, Sequence[int]], key: dict
) -> Calibration:
    threads = torch.get_num_threads()
    per_job = max(1, threads // jobs)
    started = time.perf_counter()
    samples = {}
    try:
        for name in OPERATIONS:  # the estimate's products run one module at a time, on all
            torch.set_num_threads(threads if name in ALL_THREADS else per_job)
            samples[name] = [_time(device, name, n) for n in sizes[name]]
    finally:
        torch.set_num_threads(threads)
    rates = {
        name: sum(work for _, work, _ in runs) / max(sum(s for _, _, s in runs), 1e-9)
        for name, runs in samples.items()
    }
    return Calibration(
        key=key,
        rates=rates,
        jobs=jobs,
        threads=per_job,
        source="measured",
        seconds=time.perf_counter() - started,
        samples={name: [[n, s] for n, _, s in runs] for name, runs in samples.items()},
    )


def _time(device: torch.device, operation: str, n: int) -> tuple[int, float, float]:
    """``(n, work, seconds)`` of one operation at size n, the best of two runs."""
    generator = torch.Generator().manual_seed(n)
    cuda = device.type == "cuda"

    def square() -> torch.Tensor:
        return torch.randn(n, n, generator=generator, dtype=torch.float64).to(device)  # (n, n)

    if operation == "gram":
        M = square()
        run: Callable[[], object] = (lambda: M @ M.T) if cuda else (lambda: _lower_gram(M))
        work = flops("gram", n, n, full_gram=cuda)
    elif operation == "eigvalsh":
        M = square()
        S = M + M.T  # (n, n) symmetric
        run, work = (lambda: torch.linalg.eigvalsh(S)), flops("eigvalsh", n, n)
    elif operation == "svd":
        M = square()
        run, work = (lambda: torch.linalg.svdvals(M)), flops("svd", n, n)
    elif operation == "qr":
        T = torch.randn(8 * n, max(n // 4, 1), generator=generator, dtype=torch.float64)
        T = T.to(device)  # (8n, n/4)
        run, work = (lambda: torch.linalg.qr(T, mode="r")), flops("qr", *T.shape)
    elif operation == "thin":
        M = square()
        X = torch.randn(n, THIN_COLUMNS, generator=generator, dtype=torch.float64).to(device)
        gram, _ = gram_product(M)  # both directions, as the estimate's products take them
        run, work = (lambda: gram(X)), 2 * flops("thin", n, n, THIN_COLUMNS)
    else:  # read: a float32 safetensors file into float64
        return (n, *_time_read(n, device))
    best = float("inf")
    for _ in range(2):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return n, work, best


def _time_read(n: int, device: torch.device) -> tuple[float, float]:
    from safetensors.torch import load_file, save_file

    tensor = torch.randn(n, n, dtype=torch.float32)  # (n, n)
    with tempfile.TemporaryDirectory() as folder:
        file = os.path.join(folder, "w.safetensors")
        save_file({"w": tensor}, file)
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            load_file(file)["w"].to(device=device, dtype=torch.float64)
            _sync(device)
            best = min(best, time.perf_counter() - start)
    return float(tensor.numel() * tensor.element_size()), best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
