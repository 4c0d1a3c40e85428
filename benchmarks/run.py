"""spectra's benchmark harness: ratios against the naive way, measured in one run.

    python benchmarks/run.py            # the full sizes (about 25 minutes on 2 CPU cores)
    python benchmarks/run.py --quick    # small shapes, under a minute
    python benchmarks/run.py --sections a,b --json results.json

Sections, each timed against its baseline on the same input in the same run:

a. factored σ (QR core, float64) against merging B@A and ``torch.linalg.svdvals``
   in float32, at d = 4096 and r ∈ {8, 16, 64, 160};
b. dense σ, ``fast`` (float64 Gram eigenvalues) and ``exact`` (float64 SVD),
   against ``torch.linalg.svdvals`` float32 and numpy float64, at 4096² and
   1024×4096, with each method's accuracy against numpy float64;
c. end to end: ``spectra analyze`` of a LLaMA-7B-shaped full fine-tune restricted
   to what it needs (32 layers of k/v 4096², bf16, sharded safetensors with an
   index, and a matching base, made once into ``--cache``) against a
   straightforward script (``load_file`` of every shard, subtract,
   ``torch.linalg.svdvals``) and, when installed, WeightWatcher 0.7.7;
d. peak resident memory of ``spectra analyze`` for 8 and for 32 layers;
e. ``spectra extract``'s truncation (randomized range finder, p = 10, q = 4
   power iterations) against a full float64 SVD, as mergekit extracts LoRAs,
   on a 4096² ΔW with a decaying spectrum, at r ∈ {16, 64}: the time ratio and
   the largest relative error of the top-r σ;
f. ``spectra analyze --estimate`` against the default path, end to end on a
   full fine-tune with dense power-law ΔW: two 8192² modules and one 16384²
   (``benchmarks/estimate_section.py``): the time ratio and the effective
   rank's deviation in stated errors and in %.

Prints a table and writes every number as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from estimate_section import section_f
from safetensors.torch import load_file, save_file

import spectra
from spectra import Dense, Factored, singular_values

ROOT = Path(__file__).resolve().parent


def timed(function, repeat: int = 1) -> tuple[float, object]:
    """Median wall time of ``function()`` over ``repeat`` runs, and its last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def relative_error(sigma: np.ndarray, reference: np.ndarray, floor: float = 1e-5) -> float:
    """Largest relative error over the values ≥ floor·σ_1 of the reference."""
    k = min(len(sigma), len(reference))
    sigma, reference = np.asarray(sigma[:k]), np.asarray(reference[:k])
    keep = reference >= floor * reference[0]
    return float(np.max(np.abs(sigma[keep] - reference[keep]) / reference[keep]))


def merge_and_svdvals(B: torch.Tensor, A: torch.Tensor, scale: float) -> torch.Tensor:
    """The naive way: materialise ΔW = s·B@A in float32, then a dense SVD."""
    return torch.linalg.svdvals(scale * (B @ A))


def section_a(quick: bool) -> list[dict]:
    d = 1024 if quick else 4096
    rows = []
    for r in (8, 16, 64, 160):
        generator = torch.Generator().manual_seed(r)
        B = torch.randn(d, r, generator=generator)  # (d, r)
        A = torch.randn(r, d, generator=generator)  # (r, d)
        factored = Factored(B, A, 2.0)
        ours, sigma = timed(partial(singular_values, factored, "cpu"), repeat=5)
        naive, naive_sigma = timed(partial(merge_and_svdvals, B, A, 2.0))
        rows.append(
            {
                "case": f"factored d={d} r={r}",
                "spectra_s": ours,
                "baseline": "merge + svdvals fp32",
                "baseline_s": naive,
                "ratio": naive / ours,
                "max_rel_diff_vs_baseline": relative_error(
                    sigma.numpy(), naive_sigma.double().numpy()
                ),
            }
        )
    return rows


def section_b(quick: bool) -> list[dict]:
    shapes = [(1024, 1024), (256, 1024)] if quick else [(4096, 4096), (1024, 4096)]
    rows = []
    repeat = 1 if quick else 3  # the median of three: the first call also pays for warm-up
    for d_out, d_in in shapes:
        rng = np.random.default_rng(d_out)
        n = min(d_out, d_in)
        U, _ = np.linalg.qr(rng.standard_normal((d_out, n)))
        V, _ = np.linalg.qr(rng.standard_normal((d_in, n)))
        values = np.logspace(0, -6, n)  # spans the range where the fast path is accurate
        matrix = ((U * values) @ V.T).astype(np.float32)
        tensor = torch.from_numpy(matrix)
        float64 = matrix.astype(np.float64)
        t_numpy, reference = timed(partial(np.linalg.svd, float64, compute_uv=False), repeat)
        t_torch32, sigma32 = timed(partial(torch.linalg.svdvals, tensor), repeat)
        t_fast, fast = timed(partial(singular_values, Dense(tensor), "cpu", "fast"), repeat)
        t_exact, exact = timed(partial(singular_values, Dense(tensor), "cpu", "exact"), repeat)
        for name, seconds, sigma in (("fast", t_fast, fast), ("exact", t_exact, exact)):
            rows.append(
                {
                    "case": f"dense {name} {d_out}x{d_in}",
                    "spectra_s": seconds,
                    "baseline": "svdvals fp32",
                    "baseline_s": t_torch32,
                    "ratio": t_torch32 / seconds,
                    "numpy_fp64_s": t_numpy,
                    "ratio_vs_numpy": t_numpy / seconds,
                    "max_rel_err_1e-5": relative_error(sigma.numpy(), reference),
                    "baseline_max_rel_err_1e-5": relative_error(
                        sigma32.double().numpy(), reference
                    ),
                }
            )
    return rows


def make_llama_shaped(cache: Path, layers: int, d: int) -> tuple[Path, Path]:
    """A base and a tuned model: k/v of ``layers`` layers, d×d, bf16, 4 shards + index."""
    folders = (cache / f"base-{layers}x{d}", cache / f"tuned-{layers}x{d}")
    if all((f / "model.safetensors.index.json").is_file() for f in folders):
        return folders
    generator = torch.Generator().manual_seed(0)
    shards = 4
    per_shard = max(1, layers // shards)
    for which, folder in enumerate(folders):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        weight_map = {}
        for shard in range((layers + per_shard - 1) // per_shard):
            name = (
                f"model-{shard + 1:05d}-of-{(layers + per_shard - 1) // per_shard:05d}.safetensors"
            )
            tensors = {}
            for layer in range(shard * per_shard, min(layers, (shard + 1) * per_shard)):
                for proj in ("k_proj", "v_proj"):
                    key = f"model.layers.{layer}.self_attn.{proj}.weight"
                    seed = 2 * layer + (proj == "v_proj")  # the same base weight on both sides
                    base = 0.02 * torch.randn(d, d, generator=torch.Generator().manual_seed(seed))
                    if which == 1:  # a fine-tune: base + a small full-rank random update
                        base = base + 0.002 * torch.randn(d, d, generator=generator)
                    tensors[key] = base.to(torch.bfloat16)
                    weight_map[key] = name
            save_file(tensors, str(folder / name))
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        (folder / "config.json").write_text(
            json.dumps({"model_type": "llama", "num_attention_heads": 32})
        )
    return folders


def naive_script(tuned: Path, base: Path) -> dict[str, np.ndarray]:
    """What one writes without spectra: load each shard whole, subtract, svdvals."""
    result = {}
    for shard in sorted(tuned.glob("model-*.safetensors")):
        tuned_tensors = load_file(str(shard))
        base_tensors = load_file(str(base / shard.name))
        for name, weight in tuned_tensors.items():
            delta = weight.float() - base_tensors[name].float()
            result[name] = torch.linalg.svdvals(delta).double().numpy()
    return result


def weightwatcher_run(tuned: Path, base: Path) -> float | str:
    """WeightWatcher 0.7.7's analyze with base_model, if it is installed; its time or why not."""
    try:
        import weightwatcher as ww
    except ImportError:
        return "not installed (pip install weightwatcher==0.7.7)"
    try:
        watcher = ww.WeightWatcher(model=str(tuned), base_model=str(base))
        seconds, _ = timed(lambda: watcher.analyze(randomize=False, plot=False))
        return seconds
    except Exception as exc:  # a peer's failure is a result to report, not a crash
        return f"failed: {type(exc).__name__}: {exc}"[:200]


def section_c(quick: bool, cache: Path, layers: int) -> list[dict]:
    layers, d = (4, 1024) if quick else (layers, 4096)
    base, tuned = make_llama_shaped(cache, layers, d)
    t_spectra, report = timed(lambda: spectra.analyze(tuned, base=base, device="cpu"))
    t_naive, naive = timed(lambda: naive_script(tuned, base))
    errors = [
        relative_error(report.spectrum_of(row), naive[row["name"]], 1e-3)
        for row in report.rows
    ]
    row = {
        "case": f"analyze FT, {layers} layers k/v {d}x{d} bf16, sharded",
        "spectra_s": t_spectra,
        "baseline": "load_file + subtract + svdvals fp32",
        "baseline_s": t_naive,
        "ratio": t_naive / t_spectra,
        "max_rel_diff_vs_baseline_1e-3": max(errors),
    }
    ww_result = weightwatcher_run(tuned, base)
    row["weightwatcher_0.7.7"] = ww_result
    if isinstance(ww_result, float):
        row["ratio_vs_weightwatcher"] = ww_result / t_spectra
    return [row]


def peak_rss_mb(arguments: list[str]) -> float:
    """Peak resident memory (MB) of a child process running the spectra CLI."""
    probe = (
        "import resource, subprocess, sys; "
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *arguments], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip()) / 1024  # ru_maxrss is in KiB on Linux


def section_d(quick: bool, cache: Path, layers: int) -> list[dict]:
    layers, d = (4, 1024) if quick else (layers, 4096)
    base, tuned = make_llama_shaped(cache, layers, d)
    cli = [
        sys.executable,
        "-m",
        "spectra_cli.main",
        "analyze",
        str(tuned),
        "--base",
        str(base),
        "-q",
    ]
    few = max(1, layers // 4)
    small = peak_rss_mb([*cli, "--layers", f"0-{few - 1}"])
    full = peak_rss_mb(cli)
    return [
        {
            "case": f"peak RSS, {few} vs {layers} layers of {d}x{d}",
            f"rss_{few}_layers_mb": small,
            f"rss_{layers}_layers_mb": full,
            "growth": full / small - 1,
        }
    ]


def section_e(quick: bool) -> list[dict]:
    from spectra.actions.truncation import dense_top

    d = 1024 if quick else 4096
    generator = torch.Generator().manual_seed(7)
    U, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    sigma = 0.98 ** torch.arange(d, dtype=torch.float64)  # a slowly decaying full spectrum
    delta = (U * sigma) @ V.T  # (d, d)
    full, (_, reference, _) = timed(partial(torch.linalg.svd, delta, full_matrices=False))
    rows = []
    for r in (16, 64):
        ours, top = timed(partial(dense_top, delta, r))
        error = float(torch.max(torch.abs(top.S - reference[:r]) / reference[:r]))
        rows.append(
            {
                "case": f"extract d={d} r={r} ({top.algorithm})",
                "spectra_s": ours,
                "baseline": "full SVD float64",
                "baseline_s": full,
                "ratio": full / ours,
                "max_rel_diff_vs_baseline": error,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="spectra benchmarks: ratios measured in one run")
    parser.add_argument("--quick", action="store_true", help="small shapes, for a check in CI time")
    parser.add_argument("--sections", default="a,b,c,d,e,f", help="which of a,b,c,d,e,f to run")
    parser.add_argument(
        "--cache", type=Path, default=ROOT / ".cache", help="where section c's models go"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--layers", type=int, default=32, help="layers of the c/d model (k and v each)"
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    results = {
        "machine": {
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "quick": args.quick,
        "sections": {},
    }
    runners = {
        "a": lambda: section_a(args.quick),
        "b": lambda: section_b(args.quick),
        "c": lambda: section_c(args.quick, args.cache, args.layers),
        "d": lambda: section_d(args.quick, args.cache, args.layers),
        "e": lambda: section_e(args.quick),
        "f": lambda: section_f(args.quick, args.cache),
    }
    for name in args.sections.split(","):
        print(f"section {name} …", file=sys.stderr, flush=True)
        results["sections"][name] = runners[name.strip()]()
        for row in results["sections"][name]:
            print(_line(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this harness: {peak:.0f} MB")


def _line(row: dict) -> str:
    parts = []
    for key, value in row.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        else:
            parts.append(f"{key}={value}")
    return "  ".join(parts)


if __name__ == "__main__":
    main()
