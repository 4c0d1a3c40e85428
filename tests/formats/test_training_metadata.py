"""What a checkpoint's files say about its training: shown by ``inspect``, kept in report.json.

Each file is written by its trainer's own code where it can run here (the
Hugging Face Trainer's ``TrainerState``); the summary must carry the values
written, under spectra's names for them. MLX-LM and torchtune are tested
beside their formats (tests/formats/test_mlx.py, test_torchtune.py).
"""

from __future__ import annotations

import json
import shutil

from click.testing import CliRunner
from spectra_cli.main import cli

import spectra


def test_a_trainer_checkpoint_shows_its_trainer_state(tmp_path, lora_adapter):
    from transformers import TrainerState

    folder = tmp_path / "checkpoint-300"
    shutil.copytree(lora_adapter.path, folder)
    state = TrainerState(global_step=300, max_steps=900, epoch=1.0, num_train_epochs=3)
    state.train_batch_size = 16
    state.log_history = [
        {"step": 100, "learning_rate": 3e-4, "loss": 2.5},
        {"step": 300, "learning_rate": 1e-4, "loss": 1.25},
    ]
    state.save_to_json(str(folder / "trainer_state.json"))

    result = CliRunner().invoke(cli, ["inspect", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    training = json.loads(result.output)["training"]
    assert training["written_by"].startswith("Hugging Face Trainer")
    assert training["fields"] == {
        "steps": 300,
        "max_steps": 900,
        "epoch": 1.0,
        "epochs": 3,
        "batch_size": 16,
        "last_learning_rate": 1e-4,
        "last_loss": 1.25,
    }
    text = CliRunner().invoke(cli, ["inspect", str(folder)]).output
    assert "training (as Hugging Face Trainer" in text and "last_loss:" in text
    report = spectra.analyze(folder, layers=[0])
    assert report.meta["training"] == training


def test_nothing_said_is_nothing_shown(lora_adapter):
    result = CliRunner().invoke(cli, ["inspect", str(lora_adapter.path)])
    assert result.exit_code == 0 and "training (" not in result.output
    assert spectra.analyze(lora_adapter.path, layers=[0]).meta["training"] == {}
