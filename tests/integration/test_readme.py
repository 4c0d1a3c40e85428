"""The README and the docs tell the truth: their Python examples run, and what they promise holds.

Every ```python block of README.md and of docs/*.md is run as a script, in
its own subprocess, in a folder holding the demo's checkpoints under the
names the pages use (``base/``, ``tuned/``, ``adapter/``,
``final_checkpoint.pt``, ``output/checkpoint-<step>/``), so an example that
drifts from the code fails here. Beside them: the demo's
closing sentence states what was measured (checked against numpy's SVD of the
demo's own files), and ``spectra --help`` names every format spectra reads.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

# Every example of the README and docs, on the demo's checkpoints.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(page: Path = README) -> list[str]:
    return _PYTHON_BLOCK.findall(page.read_text(encoding="utf-8"))


def all_python_blocks() -> list[tuple[str, int, str]]:
    """(page relative to the repository, index on that page, code) of every example."""
    return [
        (page.relative_to(ROOT).as_posix(), index, block)
        for page in PAGES
        for index, block in enumerate(python_blocks(page))
    ]


@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory) -> Path:
    """The demo's checkpoints under the README's names."""
    from spectra.examples.demo import write_demo_checkpoints

    folder = tmp_path_factory.mktemp("readme")
    demo = write_demo_checkpoints(folder / "demo")
    shutil.copytree(demo["base"], folder / "base")
    shutil.copytree(demo["ft"], folder / "tuned")
    shutil.copytree(demo["lora"], folder / "adapter")
    shutil.copy(demo["multilora"], folder / "final_checkpoint.pt")
    for step in (50, 100):  # a training run: the Trainer's checkpoint-<step>/ folders
        shutil.copytree(demo["lora"], folder / "output" / f"checkpoint-{step}")
    return folder


def test_the_readme_and_docs_have_the_python_examples_this_file_runs():
    assert any("spectra.analyze(" in block for block in python_blocks(README))  # quick start
    blocks = [block for _, _, block in all_python_blocks()]
    assert len(blocks) >= 3  # the quick start, "From Python", "Watching a run as it trains"
    assert any("spectra.analyze(" in block for block in blocks)
    assert any("watch(trainer" in block for block in blocks)


@pytest.mark.parametrize(
    ("page", "index", "block"),
    all_python_blocks(),
    ids=[f"{page}-{index}" for page, index, _ in all_python_blocks()],
)
def test_every_python_example_in_the_readme_and_docs_runs(
    readme_folder, tmp_path, page, index, block
):
    work = tmp_path / "run"
    shutil.copytree(readme_folder, work, symlinks=True)
    script = work / f"readme_block_{index}.py"
    script.write_text(block, encoding="utf-8")
    env = {
        **os.environ,
        "SPECTRA_CACHE": str(tmp_path / "cache"),  # never the user's cache
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join([str(README.parent), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, script.name],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{page} block {index}:\n{block}\n{result.stderr[-4000:]}"
    if "report.save(" in block:  # the files the README says a saved report holds
        saved = sorted(p.name for p in (work / "adapter-report").iterdir())
        assert saved == ["metrics.csv", "report.json", "spectra.safetensors"]
    if "watch(trainer" in block:  # a report folder per measured step
        assert sorted(p.name for p in (work / "spectra-run").iterdir()) == ["step-2", "step-4"]


def _sigma(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.svd(matrix.astype(np.float64), compute_uv=False)


def _normalized_entropy(sigma: np.ndarray, n: int) -> float:
    p = sigma[sigma > 1e-12 * sigma[0]] / sigma[sigma > 1e-12 * sigma[0]].sum()
    return float(-(p * np.log(p)).sum() / np.log(n))


def test_the_demo_sentence_states_what_numpy_measures_on_its_files(tmp_path):
    """Each number of the closing sentence, from numpy's SVD of the checkpoints as saved."""
    import torch
    from safetensors.numpy import load_file
    from spectra_cli.main import cli

    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "demo"), "--quiet"])
    assert result.exit_code == 0, result.output
    sentence = next(line for line in result.output.splitlines() if line.startswith("Measured"))
    folder = tmp_path / "demo" / "checkpoints"
    tuned = load_file(str(folder / "ft" / "model.safetensors"))
    base = load_file(str(folder / "base" / "model.safetensors"))
    adapter = load_file(str(folder / "lora" / "adapter_model.safetensors"))
    multilora = torch.load(folder / "multilora.pt", weights_only=True)
    spectra_of: dict[str, list[np.ndarray]] = {"FT": [], "LoRA": [], "MultiLoRA": []}
    for layer in range(4):
        for module in ("k_proj", "v_proj"):
            name = f"model.layers.{layer}.self_attn.{module}"
            spectra_of["FT"].append(_sigma(tuned[f"{name}.weight"] - base[f"{name}.weight"]))
            B = adapter[f"base_model.model.{name}.lora_B.weight"].astype(np.float64)
            A = adapter[f"base_model.model.{name}.lora_A.weight"].astype(np.float64)
            spectra_of["LoRA"].append(_sigma(16 / 8 * B @ A)[:8])
            a, b, c = (
                multilora[f"{name}.{part}"].double().numpy()
                for part in ("lora_A", "lora_B", "lora_scaling")
            )  # (4, 2, 256) (4, 64, 2) (4, 64)
            delta = sum(c[i][:, None] * (b[i] @ a[i]) for i in range(4)) * 16 / 2  # α/r
            spectra_of["MultiLoRA"].append(_sigma(delta)[:8])
    entropy = {m: np.mean([_normalized_entropy(s, 64) for s in v]) for m, v in spectra_of.items()}
    top = {m: np.mean([s[0] ** 2 / (s**2).sum() for s in v]) for m, v in spectra_of.items()}
    order = sorted(entropy, key=lambda m: -entropy[m])
    assert order == ["FT", "MultiLoRA", "LoRA"]
    expected = ", ".join(f"{m} {entropy[m]:.2f}" for m in order)
    assert f"normalized entropy, highest first, {expected};" in sentence
    assert f"LoRA {top['LoRA']:.0%}" in sentence and top["LoRA"] == pytest.approx(0.75, abs=1e-3)
    for method, directions in (("FT", 64), ("LoRA", 8), ("MultiLoRA", 8)):
        ranks = [np.exp(-(p * np.log(p)).sum()) for p in (s / s.sum() for s in spectra_of[method])]
        assert f"{method} {np.mean(ranks):.1f}/{directions} " in sentence
    # the words follow the numbers: MultiLoRA (0.49) is not grouped with FT (0.96)
    assert (
        "FT is the most balanced" in sentence and ", LoRA leans most on one direction" in sentence
    )
    assert "MultiLoRA fills its own directions most evenly" in sentence


def test_help_names_every_format_spectra_reads():
    from spectra_cli.main import cli

    text = CliRunner().invoke(cli, ["--help"]).output
    for name in (
        "full fine-tunes",
        "FSDP",
        "DeepSpeed ZeRO",
        "LoRA",
        "DoRA",
        "AdaLoRA",
        "LoHa",
        "LoKr",
        "VeRA",
        "multi-head LoRA",
        "MultiLoRA",
        "kohya",
        "LyCORIS",
        "diffusers",
        "MLX",
        "torchtune",
        "GGUF",
    ):  # the rows of docs/formats.md's table
        assert name in text, name
