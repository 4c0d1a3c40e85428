"""Checkpoints named by Hub id, resolved through a Hugging Face cache laid out by the test.

The cache copies the real layout (``models--org--name/refs/main``,
``snapshots/<commit>/`` entries that link to ``blobs/<sha256>``); the
network is never used (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra
from spectra.errors import FormatError

from .conftest import reference_sigma

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def cache_repo(cache: Path, repo: str, files: list[Path], commit: str = COMMIT) -> Path:
    """Put ``files`` into ``cache`` as the Hub client does: blobs, a snapshot of links, a ref."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir(exist_ok=True)
    for file in files:
        blob = folder / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("../..") / "blobs" / blob.name)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch, minilm_dir, lora_adapter) -> Path:
    cache = tmp_path / "hub"
    cache_repo(cache, "sentence-transformers/all-MiniLM-L6-v2", sorted(minilm_dir.glob("*.*")))
    cache_repo(cache, "lab/minilm-lora", sorted(lora_adapter.path.glob("adapter_*")))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def check_against_merge(report: spectra.Report, reference: dict) -> None:
    for (layer, role), delta in reference.items():
        expected = reference_sigma(delta)[:8]
        np.testing.assert_allclose(report.spectrum(layer, role)[:8], expected, rtol=1e-9)


def test_adapter_and_base_by_hub_id(hub_cache, lora_adapter):
    report = spectra.analyze("lab/minilm-lora", base="sentence-transformers/all-MiniLM-L6-v2")
    check_against_merge(report, lora_adapter.reference)
    assert report.meta["source"]["hub_id"] == "lab/minilm-lora"
    assert report.meta["source"]["path"].startswith(str(hub_cache))
    # relative_norm needs W0, so the base really came from the cache
    assert all(row["relative_norm"] > 0 for row in report.rows)


def test_revision_picks_its_snapshot(hub_cache, minilm_dir):
    folder = hub_cache / "models--lab--minilm-lora" / "snapshots"
    (folder / OTHER_COMMIT).mkdir()
    with pytest.raises(FormatError, match="minilm-lora@v2"):
        spectra.load("lab/minilm-lora@v2")  # no such ref yet
    refs = hub_cache / "models--lab--minilm-lora" / "refs"
    shutil.copytree(folder / COMMIT, folder / OTHER_COMMIT, dirs_exist_ok=True, symlinks=True)
    (refs / "v2").write_text(OTHER_COMMIT)
    assert spectra.load("lab/minilm-lora@v2").path == folder / OTHER_COMMIT


def test_without_huggingface_hub_the_cache_is_read_directly(hub_cache, lora_adapter, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    report = spectra.analyze("lab/minilm-lora", modules=["k"], layers=[0])
    check_against_merge(report, {(0, "k"): lora_adapter.reference[(0, "k")]})


def test_base_model_name_from_an_adapter_config_resolves_through_the_cache(hub_cache):
    from spectra.loaders.peft import resolve_base

    found = resolve_base("sentence-transformers/all-MiniLM-L6-v2")
    assert found is not None and (found / "model.safetensors").is_file()
    assert str(found).startswith(str(hub_cache))
    assert resolve_base("lab/minilm-lora") is None  # cached, but not a model


@pytest.mark.parametrize("hub_installed", [True, False])
def test_missing_id_offline_is_a_clear_error(hub_cache, monkeypatch, hub_installed):
    if not hub_installed:
        monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(FormatError, match=r"lab/absent \(CKPT\).*cache"):
        spectra.analyze("lab/absent")


def test_cli_analyze_hub_id(hub_cache, tmp_path, lora_adapter):
    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli, ["analyze", "lab/minilm-lora", "--out", str(out), "--quiet", "--layers", "0"]
    )
    assert result.exit_code == 0, result.output
    check_against_merge(
        spectra.Report.load(out),
        {key: value for key, value in lora_adapter.reference.items() if key[0] == 0},
    )
