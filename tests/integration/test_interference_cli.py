"""``spectra compare --interference`` on real MiniLM checkpoints, against numpy.

Two full fine-tunes of all-MiniLM-L6-v2 with planted updates (one pair of
modules sharing a column space) and two real peft LoRA adapters of it; the
reference ΔW is read independently of spectra (safetensors for the fine-tunes,
peft's own float64 merge for the adapters), and SAR and STI are computed
from it with numpy as docs/multi-task.md defines them.
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.numpy import load_file
from spectra_cli.main import cli

import spectra
from spectra.errors import SpectraError
from tests.helpers.adapters import make_peft_adapter
from tests.helpers.checks import folded_column
from tests.helpers.models import ROLE_MODULES, load_bert

pytestmark = pytest.mark.slow

HEADER = "layer,role,label_a,label_b,k_a,k_b,sar_a_to_b,sar_b_to_a,sti"
# (layer, role) → the rank of fine-tune A (the session's, rank 8 everywhere) and of B, planted
# here; at (0, "k") B's left singular vectors are A's first three
RANKS = {(0, "k"): (8, 3), (0, "v"): (8, 2), (1, "k"): (8, 6), (1, "v"): (8, 4)}


_SVDS: dict[int, tuple] = {}


def np_svd(delta):
    """numpy's float64 SVD of a reference ΔW, taken once per array."""
    if id(delta) not in _SVDS:
        _SVDS[id(delta)] = (delta, np.linalg.svd(delta, full_matrices=False))  # array kept: id
    return _SVDS[id(delta)][1]


def np_sar(delta_a, delta_b, k):
    U_k = np_svd(delta_a)[0][:, :k]
    return np.linalg.norm(U_k @ U_k.T @ delta_b) / np.linalg.norm(delta_b)


def np_sti(delta_a, delta_b, k_a, k_b):
    (Ua, Sa, Vta), (Ub, Sb, Vtb) = np_svd(delta_a), np_svd(delta_b)
    U = np.concatenate([Ua[:, :k_a], Ub[:, :k_b]], axis=1)
    V = np.concatenate([Vta[:k_a].T, Vtb[:k_b].T], axis=1)
    S = np.diag(np.concatenate([Sa[:k_a], Sb[:k_b]]))
    eye = np.eye(k_a + k_b)
    return np.abs((U.T @ U - eye) @ S @ (V.T @ V - eye)).sum()


def _orthonormal(rng, d, k):
    return np.linalg.qr(rng.standard_normal((d, k)))[0]


@pytest.fixture(scope="module")
def pair(finetunes, tmp_path_factory, minilm_dir):
    """Fine-tune A (conftest's) and B: σ_i = 0.3·0.7^i planted on layers 0 and 1, float32."""
    first = finetunes("single")
    rng = np.random.default_rng(11)
    model = load_bert(minilm_dir)
    with torch.no_grad():
        for (layer, role), (_, r) in RANKS.items():
            if (layer, role) == (0, "k"):  # A's top r left vectors: its rank-8 update's column
                planted = first.planted[(0, "k")]  # space Q, then the SVD of Qᵀ·ΔW (8 × 384)
                Q = np.linalg.qr(planted @ rng.standard_normal((384, 8)))[0]
                left = Q @ np.linalg.svd(Q.T @ planted, full_matrices=False)[0][:, :r]
            else:
                left = _orthonormal(rng, 384, r)
            update = (left * 0.3 * 0.7 ** np.arange(r)) @ _orthonormal(rng, 384, r).T
            module = getattr(model.encoder.layer[layer].attention.self, ROLE_MODULES[role])
            module.weight += torch.from_numpy(update).float()
    second = tmp_path_factory.mktemp("ft-B")
    model.save_pretrained(str(second))
    return {"A": first.path, "B": second}


def saved_delta(folder, base, layer, role):
    name = f"encoder.layer.{layer}.attention.self.{ROLE_MODULES[role]}.weight"
    tuned, original = load_file(str(folder / "model.safetensors")), load_file(str(base))
    find = lambda weights: next(v for k, v in weights.items() if k.endswith(name))  # noqa: E731
    return find(tuned).astype(np.float64) - find(original).astype(np.float64)


def read_rows(path):
    with open(path) as file:
        return list(csv.DictReader(file))


def check_rows(rows, deltas, ranks, labels, keys=((0, "k"), (0, "v"), (1, "k"), (1, "v"))):
    """Each row against numpy from the independent ΔW, k each ΔW's (planted) rank."""
    assert [(int(r["layer"]), r["role"]) for r in rows] == list(keys)
    for row in rows:
        key = (int(row["layer"]), row["role"])
        (da, db), (ka, kb) = deltas[key], ranks[key]
        assert (row["label_a"], row["label_b"]) == labels
        assert (int(row["k_a"]), int(row["k_b"])) == (ka, kb)
        assert float(row["sar_a_to_b"]) == pytest.approx(np_sar(da, db, ka), rel=1e-6)
        assert float(row["sar_b_to_a"]) == pytest.approx(np_sar(db, da, kb), rel=1e-6)
        assert float(row["sti"]) == pytest.approx(np_sti(da, db, ka, kb), rel=1e-6)


def test_two_full_finetunes(pair, minilm_dir, tmp_path):
    out = tmp_path / "cmp"
    base = str(minilm_dir)
    arguments = [str(pair["A"]), str(pair["B"]), "--label", "A", "--label", "B"]
    arguments += ["--base", base, "--layers", "0-1", "--interference", "--out", str(out), "-q"]
    result = CliRunner().invoke(cli, ["compare", *arguments])
    assert result.exit_code == 0, result.output
    assert "task interference, mean over layers" in result.output
    assert (out / "interference.csv").read_text().splitlines()[0] == HEADER
    assert (out / "interference.png").stat().st_size > 10_000
    deltas = {
        key: tuple(saved_delta(pair[n], minilm_dir / "model.safetensors", *key) for n in "AB")
        for key in RANKS
    }
    rows = read_rows(out / "interference.csv")
    check_rows(rows, deltas, RANKS, ("A", "B"))
    shared = rows[0]  # (0, k): B's left vectors are A's top three, so B lies in A's subspace
    assert float(shared["sar_a_to_b"]) == pytest.approx(1.0, abs=1e-6)
    # and A's top three directions hold √(Σ_{i<3} σ_i² / Σ_{i<8} σ_i²) of A, σ_i ∝ 0.7^i
    energy = 0.49 ** np.arange(8)
    assert float(shared["sar_b_to_a"]) == pytest.approx(np.sqrt(energy[:3].sum() / energy.sum()))
    assert float(rows[1]["sar_a_to_b"]) < 0.3  # independent: near √(8/384) by chance
    # k is the report's numerical rank of each ΔW
    reports = [spectra.Report.load(out / "reports" / n) for n in "AB"]
    for index, report in enumerate(reports):
        for row in report.rows:
            assert row["numerical_rank"] == RANKS[(row["layer"], row["role"])][index]

    # interference_rank=K (--interference-rank K): at most K vectors of each side
    sources = [pair["A"], pair["B"]]
    again = spectra.compare(
        sources, ["A", "B"], base, "k", [1], interference=True, interference_rank=2
    ).interference
    ranks = {key: (min(2, a), min(2, b)) for key, (a, b) in RANKS.items()}
    check_rows(again.rows, deltas, ranks, ("A", "B"), keys=[(1, "k")])


@pytest.fixture(scope="module")
def second_lora(tmp_path_factory, minilm_dir):
    """A second real peft LoRA of MiniLM (r = 8, its own seed) on layers 0 and 1 only."""
    folder = tmp_path_factory.mktemp("lora-second")
    return make_peft_adapter(folder, minilm_dir, seed=9, layers_to_transform=[0, 1])


def test_two_lora_adapters_of_one_base(lora_adapter, second_lora, tmp_path):
    out = tmp_path / "cmp"
    sources = [str(lora_adapter.path), str(second_lora.path)]
    # no --base: both configs name the same base model
    page = tmp_path / "page.html"
    arguments = [*sources, "--interference", "--out", str(out), "--html", str(page)]
    result = CliRunner().invoke(cli, ["compare", *arguments])
    assert result.exit_code == 0, result.output
    rows = read_rows(out / "interference.csv")  # the modules both adapt: layers 0 and 1
    keys = [(0, "k"), (0, "v"), (1, "k"), (1, "v")]
    deltas = {key: (lora_adapter.reference[key], second_lora.reference[key]) for key in keys}
    labels = (lora_adapter.path.name, second_lora.path.name)
    check_rows(rows, deltas, dict.fromkeys(keys, (8, 8)), labels)
    # the HTML page folds the same table: numpy's STI of each module, to its 6 digits
    cells = folded_column(page.read_text(), "task interference (interference.csv): 4 rows", "sti")
    expected = [np_sti(*deltas[key], 8, 8) for key in keys]
    assert [float(cell) for cell in cells] == pytest.approx(expected, rel=1e-5)


def test_sources_of_different_bases_are_refused(lora_adapter, second_lora, minilm_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(second_lora.path, other)
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "some-org/another-model"
    (other / "adapter_config.json").write_text(json.dumps(config))
    out = tmp_path / "cmp"
    arguments = ["compare", str(lora_adapter.path), str(other), "--interference", "--out", str(out)]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 1
    assert "some-org/another-model" in result.output and "--base DIR" in result.output
    assert not out.exists()  # refused before any work
    with pytest.raises(SpectraError, match=r"tuned from .*another-model.*base=DIR"):
        spectra.compare([lora_adapter.path, other], interference=True)
    # the user says they share one base: measured
    fixed = spectra.compare(
        [lora_adapter.path, other], base=minilm_dir, layers=[0], interference=True
    )
    assert len(fixed.interference.rows) == 2
