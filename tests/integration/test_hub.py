"""Checkpoints named by Hub id, resolved through a Hugging Face cache laid out by the test.

The cache copies the real layout (``models--org--name/refs/main``,
``snapshots/<commit>/`` entries that link to ``blobs/<sha256>``); the
network is never used (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra
from spectra.errors import FormatError
from tests.helpers.checks import reference_sigma

# Real adapters and bases analysed through a laid-out Hub cache.
pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module")
def hub_template(tmp_path_factory, minilm_dir, lora_adapter) -> Path:
    """The Hub cache every test starts from, built once: hashing MiniLM's blobs takes a second."""
    cache = tmp_path_factory.mktemp("hub-template")
    cache_repo(cache, "sentence-transformers/all-MiniLM-L6-v2", sorted(minilm_dir.glob("*.*")))
    cache_repo(cache, "lab/minilm-lora", sorted(lora_adapter.path.glob("adapter_*")))
    return cache


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch, hub_template) -> Path:
    """A test's own Hub cache: the template's folders, its blobs hard-linked (never written)."""
    cache = tmp_path / "hub"
    def link_blobs(source: str, target: str) -> None:  # refs are small and may be rewritten
        (os.link if Path(source).parent.name == "blobs" else shutil.copyfile)(source, target)

    shutil.copytree(hub_template, cache, symlinks=True, copy_function=link_blobs)
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
    from spectra.analysis.sources import cached_base as resolve_base

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


# -- a typo never reaches the network; hf:// is the one way to ask for a download -----------


@pytest.fixture()
def no_hub_calls(monkeypatch):
    """``huggingface_hub.snapshot_download`` fails the test if anything calls it."""
    import huggingface_hub

    def called(*args, **kwargs):
        pytest.fail(f"huggingface_hub.snapshot_download called with {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", called)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # so a call would go online


def test_a_typo_is_no_such_folder_and_no_hub_call(hub_cache, no_hub_calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FormatError) as raised:
        spectra.analyze("ckpts/lroa")
    message = str(raised.value)
    assert message.startswith("ckpts/lroa (CKPT): no such file or folder")
    assert f"not in the local Hugging Face cache ({hub_cache}) either" in message
    assert message.endswith("to download it from the Hub, write hf://ckpts/lroa")
    with pytest.raises(FormatError, match=r"org/typo \(base=\).*write base='hf://org/typo'$"):
        spectra.load(tmp_path, base="org/typo")
    with pytest.raises(FormatError, match=r"ckpts/lroa \(CKPT\): no such file or folder"):
        spectra.compare(["ckpts/lroa"], ["a"])
    # not shaped like a Hub id: no cache lookup, just the missing path
    with pytest.raises(FormatError, match=r"^ckpts/lroa/x \(CKPT\): no such file or folder \("):
        spectra.load("ckpts/lroa/x")


def test_cli_typo_is_one_line_and_exit_1(hub_cache, no_hub_calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (["analyze", "ckpts/lroa"], ["inspect", "ckpts/lroa"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1, result.output
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
        assert "no such file or folder" in result.stderr and "hf://ckpts/lroa" in result.stderr
        assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["analyze", "inspect", "compare", "sweep", "convert"])
def test_help_says_how_to_download(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "hf://org/name[@revision] downloads it" in text
    assert "org/name[@revision] is looked up in the local Hugging Face cache only" in text


@pytest.mark.parametrize("hub_installed", [True, False])
def test_hf_url_offline_reads_the_cache(hub_cache, lora_adapter, monkeypatch, hub_installed):
    if not hub_installed:
        monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    report = spectra.analyze(
        "hf://lab/minilm-lora", base="hf:sentence-transformers/all-MiniLM-L6-v2", layers=[0]
    )
    check_against_merge(
        report, {key: value for key, value in lora_adapter.reference.items() if key[0] == 0}
    )
    source = report.meta["source"]
    assert source["hub_id"] == "lab/minilm-lora" and source["revision"] is None
    assert source["commit"] == COMMIT
    assert source["path"] == str(hub_cache / "models--lab--minilm-lora/snapshots" / COMMIT)
    assert source["base_hub_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert source["base_commit"] == COMMIT
    assert all(row["relative_norm"] > 0 for row in report.rows)  # W0 came from the cache


@pytest.mark.parametrize("hub_installed", [True, False])
def test_hf_url_missing_offline_says_so(hub_cache, monkeypatch, hub_installed):
    if not hub_installed:
        monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    expected = "HF_HUB_OFFLINE is set" if hub_installed else r"pip install 'spectra\[hub\]'"
    with pytest.raises(FormatError, match=rf"^hf://lab/absent \(CKPT\): not in the .*{expected}"):
        spectra.load("hf://lab/absent")


def test_hf_url_revision_is_recorded(hub_cache):
    folder = hub_cache / "models--lab--minilm-lora" / "snapshots"
    shutil.copytree(folder / COMMIT, folder / OTHER_COMMIT, symlinks=True)
    (hub_cache / "models--lab--minilm-lora" / "refs" / "v2").write_text(OTHER_COMMIT)
    report = spectra.analyze("hf://lab/minilm-lora@v2", modules=["k"], layers=[0])
    assert report.meta["source"]["revision"] == "v2"
    assert report.meta["source"]["commit"] == OTHER_COMMIT
    assert report.meta["source"]["path"] == str(folder / OTHER_COMMIT)


# -- each Hub id is resolved once per run --------------------------------------------------


@pytest.fixture()
def downloads(hub_cache, monkeypatch, lora_adapter) -> list[str]:
    """Every ``snapshot_download`` call's repo id, the real function still doing the work."""
    import huggingface_hub

    cache_repo(hub_cache, "lab/minilm-lora-2", sorted(lora_adapter.path.glob("adapter_*")))
    real = huggingface_hub.snapshot_download
    calls: list[str] = []

    def counted(repo_id, *args, **kwargs):
        calls.append(repo_id)
        return real(repo_id, *args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", counted)
    return calls


BASE_URL = "hf://sentence-transformers/all-MiniLM-L6-v2"


def test_analyze_resolves_each_id_once(downloads):
    spectra.analyze("hf://lab/minilm-lora", base=BASE_URL, modules=["k"], layers=[0])
    assert sorted(downloads) == ["lab/minilm-lora", "sentence-transformers/all-MiniLM-L6-v2"]


@pytest.mark.parametrize("subspace", [False, True])
def test_compare_resolves_each_id_once(downloads, subspace):
    spectra.compare(
        ["hf://lab/minilm-lora", "hf://lab/minilm-lora-2"],
        ["a", "b"],
        base=BASE_URL,
        modules=["k"],
        layers=[0],
        subspace=subspace,
    )
    assert sorted(downloads) == [
        "lab/minilm-lora",
        "lab/minilm-lora-2",
        "sentence-transformers/all-MiniLM-L6-v2",
    ]


def test_sweep_resolves_its_base_once(downloads, lora_adapter, tmp_path):
    for step in (10, 20):
        shutil.copytree(lora_adapter.path, tmp_path / "run" / f"checkpoint-{step}")
    spectra.run_sweep(tmp_path / "run", base=BASE_URL, modules=["k"], layers=[0], cache=False)
    assert downloads == ["sentence-transformers/all-MiniLM-L6-v2"]


def test_bare_ids_are_looked_up_once_each(hub_cache, no_hub_calls, monkeypatch):
    from spectra.io import hub

    looked_up: list[str] = []
    real = hub._cached

    def counted(match):
        looked_up.append(match["repo"])
        return real(match)

    monkeypatch.setattr(hub, "_cached", counted)
    spectra.compare(
        ["lab/minilm-lora", "lab/minilm-lora@" + COMMIT],
        ["a", "b"],
        base="sentence-transformers/all-MiniLM-L6-v2",
        modules=["k"],
        layers=[0],
    )
    assert sorted(looked_up) == [
        "lab/minilm-lora",
        "lab/minilm-lora",
        "sentence-transformers/all-MiniLM-L6-v2",
    ]
