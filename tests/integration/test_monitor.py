"""spectra.integrations: spectra of a model while it trains.

A real ``transformers.Trainer`` run (the packaged MiniLM with a real peft
LoRA on key and value, a tiny regression task made here, TensorBoard as its
logger, a checkpoint every 2 steps) is watched every 2 steps, once through
``watch(trainer)`` and once with the callback in ``callbacks=[...]`` (after
the loggers). The
independent references are the checkpoints the Trainer saved, analysed
offline by ``spectra.analyze``, and numpy's SVD of α/r·B@A read from the
saved adapter file with safetensors; the logged values are read back from
the TensorBoard event files and ``trainer_state.json``. A plain torch loop
checks ``Monitor`` on a LoRA and on dense weights (W − W_start) against
numpy.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import spectra
from spectra.errors import SelectionError, SpectraError
from tests.helpers.models import load_bert

# MiniLM trained by the Trainer and by custom loops.
pytestmark = [pytest.mark.slow, pytest.mark.trainer]

pytest.importorskip("transformers")
pytest.importorskip("peft")

STEPS, EVERY = 6, 2
METRIC_NAMES = ("normalized_entropy", "effective_rank", "stable_rank", "frobenius_norm")


def _entropy_rank(sigma: np.ndarray) -> float:
    """Effective rank exp(H(σ/Σσ)) (Roy & Vetterli), written here from its definition."""
    p = sigma[sigma > 0] / sigma.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def _tiny_regression(vocab: int, count: int = 16, length: int = 8) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (count, length), generator=generator)
    targets = torch.randn(count, generator=generator)
    return [
        {
            "input_ids": ids[i],
            "attention_mask": torch.ones(length, dtype=torch.long),
            "labels": targets[i],
        }
        for i in range(count)
    ]


def _trainer_run(folder: Path, minilm_dir: Path, how: str):
    """Six Trainer steps of a LoRA (r=4, α=8, key/value), watched every 2, saved every 2.

    ``how`` is "watch" (``watch(trainer, ...)``) or "callbacks" (the callback in
    ``Trainer(callbacks=[...])``, after the loggers). Returns the callback and
    what the Trainer printed (``disable_tqdm``: its PrinterCallback's lines).
    """
    import contextlib
    import io

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    from spectra.integrations import SpectraCallback, watch

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=1)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["key", "value"]))
    args = TrainingArguments(
        output_dir=str(folder / "run"),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        save_strategy="steps",
        save_steps=EVERY,
        logging_steps=100,  # the loss is logged at step 100: only the spectra ask for logs here
        report_to=["tensorboard"],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    data = _tiny_regression(base.config.vocab_size)
    options = {"modules": "k,v", "out": folder / "spectra", "metrics": "all"}
    if how == "watch":
        trainer = Trainer(model=model, args=args, train_dataset=data)
        callback = watch(trainer, every=EVERY, **options)
    else:
        callback = SpectraCallback(every=EVERY, **options)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
        loggers = [type(c).__name__ for c in trainer.callback_handler.callbacks]
        assert loggers.index("TensorBoardCallback") < loggers.index("SpectraCallback")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        trainer.train()
    return folder, callback, printed.getvalue()


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory, minilm_dir):
    folder, callback, _ = _trainer_run(tmp_path_factory.mktemp("trainer"), minilm_dir, "watch")
    return folder, callback


@pytest.fixture(scope="module")
def listed_run(tmp_path_factory, minilm_dir):
    """The same run with the callback passed as ``callbacks=[SpectraCallback(...)]``."""
    return _trainer_run(tmp_path_factory.mktemp("listed"), minilm_dir, "callbacks")


def _tensorboard(run: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, dict[int, float]] = {}
    for events in run.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, {}).update(
                {event.step: event.value for event in accumulator.Scalars(tag)}
            )
    return found


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


@pytest.mark.parametrize("run_fixture", ["trainer_run", "listed_run"])
def test_trainer_logs_match_offline_analysis_of_saved_checkpoints(request, run_fixture):
    folder, callback = request.getfixturevalue(run_fixture)[:2]
    run = folder / "run"
    logged = _tensorboard(run)
    for step in range(EVERY, STEPS + 1, EVERY):
        checkpoint = run / f"checkpoint-{step}"
        offline = spectra.analyze(checkpoint, modules="k,v")
        assert len(offline.rows) == 12
        # trainer_state.json of the checkpoint keeps the float64 values logged at its step
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        history = next(entry for entry in state["log_history"] if entry["step"] == step)
        for row in offline.rows:
            key = f"L{row['layer']}.{row['role']}"
            for metric in METRIC_NAMES:
                reference = float(row[metric])
                assert _relative(history[f"spectra/{key}/{metric}"], reference) < 1e-9
                # TensorBoard keeps scalars as float32: equal to the reference rounded to it
                tb = logged[f"train/spectra/{key}/{metric}"][step]
                assert tb == pytest.approx(reference, rel=2**-23)
        for role in ("k", "v"):
            mean = np.mean([row["effective_rank"] for row in offline.rows if row["role"] == role])
            assert _relative(history[f"spectra/{role}/effective_rank"], float(mean)) < 1e-9
            assert logged[f"train/spectra/{role}/effective_rank"][step] == pytest.approx(
                mean, rel=2**-23
            )
    # measured only at the due steps
    assert sorted(logged["train/spectra/v/stable_rank"]) == [2, 4, 6]
    assert [step for step, _ in callback.monitor.history] == [2, 4, 6]


def test_console_line_carries_role_means_only(listed_run):
    _, callback, printed = listed_run
    lines = [line for line in printed.splitlines() if "spectra/" in line]
    assert len(lines) == STEPS // EVERY  # one Trainer log line per measured step
    metrics = len(spectra.METRICS)
    for line in lines:
        keys = re.findall(r"'(spectra/[^']+)'", line)
        assert sorted({key.split("/")[1] for key in keys}) == ["k", "v"], line
        assert len(keys) == 2 * metrics  # two roles × the metrics; no spectra/L3.v/… key
    assert repr(callback) == (
        f"SpectraCallback(every=2, modules='k,v', out={callback.options['out']!r}, metrics='all')"
    )


def test_logged_metric_against_numpy_svd_of_saved_adapter(trainer_run):
    from safetensors.numpy import load_file

    folder, _ = trainer_run
    checkpoint = folder / "run" / "checkpoint-4"
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    tensors = load_file(str(checkpoint / "adapter_model.safetensors"))
    module = "base_model.model.bert.encoder.layer.3.attention.self.value"
    A = tensors[f"{module}.lora_A.weight"].astype(np.float64)  # (r, d_in)
    B = tensors[f"{module}.lora_B.weight"].astype(np.float64)  # (d_out, r)
    delta = config["lora_alpha"] / config["r"] * (B @ A)
    sigma = np.linalg.svd(delta, compute_uv=False)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    history = next(entry for entry in state["log_history"] if entry["step"] == 4)
    assert _relative(history["spectra/L3.v/effective_rank"], _entropy_rank(sigma)) < 1e-9
    assert _relative(history["spectra/L3.v/frobenius_norm"], float(np.linalg.norm(delta))) < 1e-9


def test_step_reports_equal_offline_reports_and_sweep_reads_them(trainer_run):
    folder, _ = trainer_run
    saved = folder / "spectra"
    assert sorted(p.name for p in saved.iterdir()) == ["step-2", "step-4", "step-6"]
    for step in (2, 4, 6):
        live = spectra.Report.load(saved / f"step-{step}")
        offline = spectra.analyze(folder / "run" / f"checkpoint-{step}", modules="k,v")
        assert live.meta["source"]["step"] == step
        assert [(r["layer"], r["role"]) for r in live.rows] == [
            (r["layer"], r["role"]) for r in offline.rows
        ]
        for mine, theirs in zip(live.rows, offline.rows, strict=True):
            for metric in spectra.METRICS:
                if theirs[metric] is None:
                    continue
                assert _relative(float(mine[metric]), float(theirs[metric])) < 1e-9, metric
            assert mine["scale"] == theirs["scale"] == 2.0
    table = spectra.sweep(saved, pattern="step-*", cache=False).to_pandas()
    assert sorted(table["step"].unique()) == [2, 4, 6]
    at4 = table[(table["step"] == 4) & (table["layer"] == 3) & (table["role"] == "v")]
    report = spectra.Report.load(saved / "step-4")
    assert float(at4["effective_rank"].iloc[0]) == report.rows[7]["effective_rank"]


def test_sweep_command_on_step_reports(trainer_run, tmp_path):
    from click.testing import CliRunner
    from spectra_cli.main import cli

    folder, _ = trainer_run
    out = tmp_path / "sweep"
    result = CliRunner().invoke(
        cli, ["sweep", str(folder / "spectra"), "--glob", "step-*", "--out", str(out), "--no-cache"]
    )
    assert result.exit_code == 0, result.output
    lines = (out / "sweep.csv").read_text().splitlines()
    assert len(lines) == 1 + 3 * 12  # a header, then 3 steps × 6 layers × k, v


def _lora_model(minilm_dir, **config):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    options = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]} | config
    return get_peft_model(load_bert(minilm_dir), LoraConfig(**options))


def _train(model, steps: int, monitor=None) -> list[dict]:
    """A plain torch loop: SGD on the squared output of a fixed batch."""
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(1000, 30000, (2, 6), generator=generator)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    logged = []
    model.train()
    for step in range(1, steps + 1):
        loss = model(input_ids=ids).last_hidden_state.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if monitor is not None:
            values = monitor.step(step)
            if values is not None:
                logged.append(values)
    return logged


def test_monitor_on_a_custom_loop_with_lora(minilm_dir, tmp_path):
    from spectra.integrations import Monitor, spectra_of_model

    model = _lora_model(minilm_dir)
    monitor = Monitor(model, modules="q,v", every=2, out=tmp_path / "steps")
    logged = _train(model, 4, monitor)
    assert len(logged) == 2 and sorted(p.name for p in (tmp_path / "steps").iterdir()) == [
        "step-2",
        "step-4",
    ]
    report = monitor.last
    assert report.meta["source"]["variant"] == "LoRA (live peft adapter 'default')"
    layer = model.base_model.model.encoder.layer[5].attention.self.query
    A = layer.lora_A["default"].weight.detach().double().numpy()
    B = layer.lora_B["default"].weight.detach().double().numpy()
    sigma = np.linalg.svd(2.0 * B @ A, compute_uv=False)
    np.testing.assert_allclose(report.spectrum(5, "q"), sigma[:4], rtol=1e-9, atol=1e-14)
    assert _relative(logged[-1]["spectra/L5.q/effective_rank"], _entropy_rank(sigma)) < 1e-9
    # relative_norm: the live frozen base weight is W0
    base = layer.get_base_layer().weight.detach().double().numpy()
    row = next(r for r in report.rows if (r["layer"], r["role"]) == (5, "q"))
    expected = float(np.linalg.norm(2.0 * B @ A) / np.linalg.norm(base))
    assert _relative(row["relative_norm"], expected) < 1e-9
    # the one-off function gives the same report rows
    again = spectra_of_model(model, "q,v")
    assert again.rows == report.rows


# where the files of a checkpoint came from (a Hub id, its commit, the base folder): a model in
# memory has none, so a live report's ``meta["source"]`` may lack these keys and only these
FILE_ONLY_SOURCE_KEYS = {"hub_id", "revision", "commit", "base", "base_hub_id", "base_commit"}


def test_monitor_report_is_built_as_analyze_builds_one(minilm_dir, tmp_path):
    """One report builder (``analysis.stream.build_report``): a live report of an adapter has
    every metadata key of ``analyze``'s report of the same adapter saved, and the same rows."""
    from spectra.integrations import Monitor

    model = _lora_model(minilm_dir)
    monitor = Monitor(model, modules="q,v", every=1)
    _train(model, 1, monitor)
    live = monitor.last
    model.save_pretrained(tmp_path / "adapter")
    offline = spectra.analyze(tmp_path / "adapter", modules="q,v")
    assert set(offline.meta) - set(live.meta) == set()
    assert set(offline.meta["source"]) - set(live.meta["source"]) == FILE_ONLY_SOURCE_KEYS
    for key in ("rank_tolerance", "modules", "layers", "method", "dtype", "not_selected"):
        assert live.meta[key] == offline.meta[key], key
    assert set(live.meta["versions"]) == set(offline.meta["versions"])
    scales = [
        {key: entry["scale"] for key, entry in report.meta["scales"].items()}
        for report in (live, offline)
    ]  # the sources differ: peft's layer, the config
    assert scales[0] == scales[1]
    assert live.columns == offline.columns
    assert [list(row) for row in live.rows] == [list(row) for row in offline.rows]
    for mine, theirs in zip(live.rows, offline.rows, strict=True):
        assert _relative(mine["effective_rank"], theirs["effective_rank"]) < 1e-9


def test_monitor_dense_weights_against_numpy(minilm_dir):
    from spectra.integrations import Monitor, spectra_of_model, start_weights

    model = load_bert(minilm_dir)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = ".attention.self.value." in name and "layer.1." in name
    values = [model.encoder.layer[layer].attention.self.value for layer in (0, 1)]
    start = [value.weight.detach().double().numpy().copy() for value in values]
    taken = start_weights(model, "v", "0-1")
    assert sorted(taken) == [f"encoder.layer.{i}.attention.self.value.weight"[:-7] for i in (0, 1)]
    monitor = Monitor(model, modules="v", layers="0-1", every=3, method="exact")
    with pytest.warns(spectra.SpectraWarning, match="step 3: L0.v: ΔW is exactly zero"):
        logged = _train(model, 3, monitor)
    assert len(logged) == 1
    report = monitor.last
    assert report.meta["source"]["variant"] == "dense (W − W at start)"
    now = model.encoder.layer[1].attention.self.value.weight.detach().double().numpy()
    delta = now - start[1]
    sigma = np.linalg.svd(delta, compute_uv=False)
    np.testing.assert_allclose(report.spectrum(1, "v"), sigma, rtol=0, atol=1e-12 * sigma[0])
    assert _relative(logged[0]["spectra/L1.v/frobenius_norm"], float(np.linalg.norm(delta))) < 1e-9
    stable = float((sigma**2).sum() / sigma[0] ** 2)
    assert _relative(logged[0]["spectra/L1.v/stable_rank"], stable) < 1e-9
    # layer 0 was frozen: ΔW is exactly zero, and the report says so (a warning, once)
    assert report.rows[0]["frobenius_norm"] == 0.0
    assert any("L0.v: ΔW is exactly zero" in w for w in report.warnings)
    # the fast (Gram) path and the function with explicit start weights
    fast = spectra_of_model(model, "v", "0-1", kind="dense", start=taken)
    assert _relative(fast.rows[1]["frobenius_norm"], float(np.linalg.norm(delta))) < 1e-9


def test_bad_inputs_are_clear_errors(minilm_dir):
    from spectra.integrations import Monitor, spectra_of_model

    model = _lora_model(minilm_dir)
    with pytest.raises(SelectionError, match=r"no o modules .* it has q, v"):
        Monitor(model, modules="o")
    with pytest.raises(SelectionError, match="unknown module role"):
        Monitor(model, modules="kv")
    with pytest.raises(SelectionError, match="no adapter 'other'"):
        spectra_of_model(model, adapter="other")
    with pytest.raises(SpectraError, match="unknown metric"):
        Monitor(model, modules="q", metrics=["effective_rnak"])
    with pytest.raises(SpectraError, match="every must be"):
        Monitor(model, modules="q", every=0)
    with pytest.raises(SpectraError, match="no peft adapter layers"):
        spectra_of_model(load_bert(minilm_dir), kind="adapter")
    with pytest.raises(SpectraError, match="start_weights"):
        spectra_of_model(load_bert(minilm_dir), "v", kind="dense")
    dora = _lora_model(minilm_dir, use_dora=True)
    with pytest.raises(SpectraError, match=r"LoRA variant \(DoraLinearVariant\).*plain LoRA"):
        Monitor(dora, modules="q")


def test_other_peft_methods_are_refused(minilm_dir):
    from peft import LoHaConfig, get_peft_model

    from spectra.integrations import spectra_of_model

    model = get_peft_model(load_bert(minilm_dir), LoHaConfig(r=4, target_modules=["value"]))
    with pytest.raises(SpectraError, match=r"a peft Linear layer \(not LoRA\)|not LoRA"):
        spectra_of_model(model, "v")


def test_callback_finds_its_handler_or_warns(minilm_dir, tmp_path):
    import warnings

    from transformers import Trainer, TrainingArguments

    from spectra.integrations import SpectraCallback

    model = _lora_model(minilm_dir)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, report_to=["tensorboard"], use_cpu=True
    )
    callback = SpectraCallback(every=1, modules="q")
    trainer = Trainer(model=model, args=args, callbacks=[callback])
    state, control = trainer.state, trainer.control
    with warnings.catch_warnings():
        warnings.simplefilter("error", spectra.SpectraWarning)
        trainer.callback_handler.on_train_begin(args, state, control)  # as the Trainer calls it
    assert callback._handler is trainer.callback_handler
    alone = SpectraCallback(every=1, modules="q")  # called by hand: no handler to find
    with pytest.warns(spectra.SpectraWarning, match="watch"):
        alone.on_train_begin(args, state, control, model=model)
    callback.attach(trainer)
    assert trainer.callback_handler.callbacks[0] is callback
    assert trainer.callback_handler.callbacks.count(callback) == 1


def test_import_spectra_loads_neither_torch_nor_transformers():
    code = (
        "import sys, spectra, spectra.integrations; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
