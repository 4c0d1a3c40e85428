"""The plan's predictions held against measured runs, and the plan of a 70B and a 405B model.

    python benchmarks/predict.py                       # 8192² ×2 side by side, then 16384²
    python benchmarks/predict.py --sizes 8192,8192 --big 0 --json out.json
    python benchmarks/predict.py --quick               # 1024² and 2048²: a smoke run

1. Calibrates this machine (``spectra.analysis.calibration``; cached after the
   first run, as ``spectra inspect`` does).
2. Makes random dense modules (float32, saved as safetensors in a temporary
   folder), reads each back into float64 and takes its σ by the fast path
   (``spectra.svd``): the ``--sizes`` modules side by side on the default
   jobs (``singular_values_stream``, as ``analyze`` runs them), the ``--big``
   one alone on the threads one job gets. Prints predicted against measured
   seconds (and, with ``--estimate``, the estimate path on the first size),
   with the load average before and after, since a loaded machine runs slower
   than the one it was calibrated on.
3. Prints the plan of LLaMA-3-70B- and LLaMA-3.1-405B-shaped full fine-tunes
   (bf16, tuned and base read) on this CPU, on one H100-class GPU whose rates
   are *assumed* (``H100_ASSUMED``, not measured) and on 16 nodes of each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

from spectra.analysis.calibration import Calibration, calibrate
from spectra.analysis.plan import format_bytes, format_seconds, module_cost, plan_modules
from spectra.delta import Dense, LayerDelta
from spectra.metrics.estimate import estimate_metrics
from spectra.svd import singular_values, singular_values_stream

# An H100 (SXM, 80 GB) as assumed here, not measured: float64 tensor-core GEMM at ~50 of its
# 67 TFLOP/s peak; cuSOLVER's eigvalsh (syevd) about 1.5 s and svdvals about 6 s at 8192²
# (their tridiagonal/bidiagonal reductions are bound by memory bandwidth, not by flops);
# thin products bound by 3.3 TB/s of HBM; reading bf16 from NVMe at 2 GB/s.
H100_ASSUMED = Calibration(
    key={"device": "H100 (assumed)"},
    rates={
        "gram": 50e12,
        "eigvalsh": 4.0 * 8192**3 / 3.0 / 1.5,
        "svd": (4.0 - 4.0 / 3.0) * 8192**3 / 6.0,
        "qr": 5e12,
        "thin": 20e12,
        "read": 2e9,
    },
    jobs=1,
    threads=1,
    source="assumed",
)

MODELS = {  # (layers, {role: (d_out, d_in)}) of the published configs
    "LLaMA-3-70B": (
        80,
        {
            "q": (8192, 8192),
            "k": (1024, 8192),
            "v": (1024, 8192),
            "o": (8192, 8192),
            "gate": (28672, 8192),
            "up": (28672, 8192),
            "down": (8192, 28672),
        },
    ),
    "LLaMA-3.1-405B": (
        126,
        {
            "q": (16384, 16384),
            "k": (1024, 16384),
            "v": (1024, 16384),
            "o": (16384, 16384),
            "gate": (53248, 16384),
            "up": (53248, 16384),
            "down": (16384, 53248),
        },
    ),
}


def load_average() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _module(path: str, layer: int) -> LayerDelta:
    """ΔW read back from its file into float64, as a loader reads a dense update."""
    matrix = load_file(path)["w"].double()  # (n, n)
    return LayerDelta(layer, "q", f"layers.{layer}.q", Dense(matrix), "float32")


def measure(sizes: list[int], big: int, calibration: Calibration, estimate: bool) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for index, n in enumerate([*sizes, *([big] if big else [])]):
            generator = torch.Generator().manual_seed(index)
            path = os.path.join(folder, f"m{index}.safetensors")
            save_file({"w": torch.randn(n, n, generator=generator) / n**0.5}, path)
            files.append((n, path))
        if big:  # alone, on the threads one job gets
            n, path = files[-1]
            predicted, read_predicted, memory = module_cost(
                (n, n), "fast", calibration, read_bytes=4 * n * n
            )
            threads = torch.get_num_threads()
            torch.set_num_threads(calibration.threads)
            before = load_average()
            start = time.perf_counter()
            delta = _module(path, 0)
            read = time.perf_counter() - start
            singular_values(delta, "cpu", "fast")
            total = time.perf_counter() - start
            torch.set_num_threads(threads)
            del delta
            rows.append(
                {
                    "what": f"{n}² fast, 1 module on {calibration.threads} thread(s)",
                    "predicted_s": predicted + read_predicted,
                    "measured_s": total,
                    "predicted_read_s": read_predicted,
                    "measured_read_s": read,
                    "predicted_memory": memory,
                    "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                    "load_before": before,
                    "load_after": load_average(),
                }
            )
            print(_line(rows[-1]), flush=True)
        if sizes:  # side by side on the default jobs, as analyze runs them
            entries = [
                {"layer": i, "role": "q", "shape": (n, n), "kind": "dense", "read_bytes": 4 * n * n}
                for i, (n, _) in enumerate(files[: len(sizes)])
            ]
            plan = plan_modules(entries, [calibration])
            deltas = (_module(path, i) for i, (_, path) in enumerate(files[: len(sizes)]))
            before = load_average()
            start = time.perf_counter()
            for _ in singular_values_stream(deltas, "cpu", "fast", jobs=calibration.jobs):
                pass
            rows.append(
                {
                    "what": f"{len(sizes)} modules {'/'.join(map(str, sizes))}² fast, "
                    f"{calibration.jobs} jobs side by side",
                    "predicted_s": plan.device("cpu").seconds,
                    "measured_s": time.perf_counter() - start,
                    "load_before": before,
                    "load_after": load_average(),
                }
            )
            print(_line(rows[-1]), flush=True)
        if estimate and sizes:
            n, path = files[0]
            predicted, read_predicted, _ = module_cost((n, n), "estimate", calibration)
            matrix = load_file(path)["w"].double()  # (n, n)
            before = load_average()
            start = time.perf_counter()
            estimate_metrics(matrix)  # on all threads, as analyze --estimate runs it
            measured = time.perf_counter() - start
            rows.append(
                {
                    "what": f"{n}² estimate, 1 module on {torch.get_num_threads()} thread(s)",
                    "predicted_s": predicted,
                    "measured_s": measured,
                    "load_before": before,
                    "load_after": load_average(),
                }
            )
            print(_line(rows[-1]), flush=True)
    return rows


def _line(row: dict) -> str:
    ratio = row["measured_s"] / row["predicted_s"]
    return (
        f"{row['what']}: predicted {format_seconds(row['predicted_s'])}, measured "
        f"{format_seconds(row['measured_s'])} (measured/predicted {ratio:.2f}); "
        f"load {row['load_before']} → {row['load_after']}"
    )


def model_plans(calibration: Calibration, nodes: int) -> list[dict]:
    rows = []
    for name, (layers, roles) in MODELS.items():
        for selection in (("k", "v"), ("q", "k", "v", "o"), tuple(roles)):
            entries = [
                {
                    "layer": layer,
                    "role": role,
                    "shape": roles[role],
                    "kind": "dense",
                    "read_bytes": 2 * 2 * roles[role][0] * roles[role][1],  # bf16, tuned + base
                }
                for layer in range(layers)
                for role in selection
            ]
            for method in ("fast", "exact", "estimate"):
                for rates in (calibration, H100_ASSUMED):
                    plan = plan_modules(entries, [rates], method=method, source=name)
                    device = plan.device()
                    rows.append(
                        {
                            "model": name,
                            "modules": ",".join(selection),
                            "count": len(entries),
                            "method": method,
                            "device": device.device,
                            "one_s": device.seconds,
                            f"nodes{nodes}_s": plan.cluster(nodes),
                            "read_s": device.read_seconds,
                            "peak_memory": device.peak_memory,
                        }
                    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="8192,8192", help="modules run side by side")
    parser.add_argument("--big", type=int, default=16384, help="one module alone (0: none)")
    parser.add_argument("--estimate", action="store_true", help="also time the estimate path")
    parser.add_argument("--quick", action="store_true", help="1024,1024 and 2048: a smoke run")
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--recalibrate", action="store_true")
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args()
    sizes = [1024, 1024] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    big = 2048 if args.quick else args.big
    calibration = calibrate("cpu", recalibrate=args.recalibrate)
    print(f"uptime load {load_average()}; {calibration!r} ({calibration.source})", flush=True)
    measured = measure(sizes, big, calibration, args.estimate)
    plans = model_plans(calibration, args.nodes)
    print(f"\nfull fine-tunes, bf16 tuned + base read; {args.nodes} nodes like each device:")
    for row in plans:
        print(
            f"{row['model']:<15} {row['modules']:<22} {row['count']:>4} {row['method']:<8} "
            f"{row['device']:<15} one {format_seconds(row['one_s']):>10}  "
            f"{args.nodes} nodes {format_seconds(row[f'nodes{args.nodes}_s']):>10}  "
            f"read {format_seconds(row['read_s']):>9}  peak {format_bytes(row['peak_memory'])}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            document = {
                "calibration": calibration.to_dict(),
                "h100_assumed": H100_ASSUMED.to_dict(),
                "measured": measured,
                "plans": plans,
            }
            json.dump(document, handle, indent=1)


if __name__ == "__main__":
    main()
