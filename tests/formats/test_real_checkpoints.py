"""spectra on genuine checkpoints against peft's merge and numpy's SVD.

The base is the real all-MiniLM-L6-v2. Adapters come from real ``peft``;
full fine-tunes from real ``transformers`` ``save_pretrained``; tiny GPT-2 and
LLaMA models are built from a ``transformers`` config with random weights to
check the architecture map where no packaged model exists.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_torch_file

import spectra
from spectra.delta import Factored
from tests.helpers.adapters import make_peft_adapter
from tests.helpers.checks import (
    DTYPES,
    assert_same_reads,
    dtype_id,
    read_deltas,
    reference_sigma,
    relative_error,
)
from tests.helpers.models import MINILM_LAYERS, tiny_gpt2, tiny_llama


def _sigma_by_key(report):
    return {
        (row["layer"], row["role"]): report.spectrum(row["layer"], row["role"])
        for row in report.rows
    }


def _assert_spectrum_matches(sigma, reference_matrix, rtol=1e-9):
    expected = reference_sigma(reference_matrix)
    k = len(sigma)
    np.testing.assert_allclose(sigma, expected[:k], rtol=rtol, atol=1e-12 * expected[0])
    assert np.all(expected[k:] <= 1e-10 * expected[0]), "reference has rank beyond spectra's values"


# ------------------------------------------------------------------- LoRA


def test_lora_sigma_matches_peft_merge(lora_adapter):
    report = spectra.analyze(lora_adapter.path, device="cpu")
    spectra_by_key = _sigma_by_key(report)
    assert set(spectra_by_key) == set(lora_adapter.reference)
    assert len(lora_adapter.reference) == 2 * MINILM_LAYERS
    for key, delta in lora_adapter.reference.items():
        _assert_spectrum_matches(spectra_by_key[key], delta)
    for row in report.rows:
        assert row["numerical_rank"] == 8
        assert row["kind"] == "factored" and row["scale"] == 2.0
    assert report.meta["source"]["variant"] == "LoRA"


def test_lora_rebuilt_delta_matches_peft_merge_in_frobenius(lora_adapter):
    checkpoint = spectra.load(lora_adapter.path)
    for delta in checkpoint.deltas():
        assert isinstance(delta.update, Factored)
        rebuilt = delta.update.to_dense().numpy()
        reference = lora_adapter.reference[(delta.layer, delta.role)]
        error = np.linalg.norm(rebuilt - reference) / np.linalg.norm(reference)
        assert error < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {"use_rslora": True, "r": 4, "lora_alpha": 8},
        {
            "target_modules": ["query", "key", "value"],
            "rank_pattern": {"key": 4},
            "alpha_pattern": {"layer.2.attention.self.value": 64},
        },
    ],
    ids=["rslora", "patterns"],
)
def test_lora_variants_match_peft_merge(tmp_path, minilm_dir, options):
    adapter = make_peft_adapter(tmp_path / "adapter", minilm_dir, seed=3, **options)
    report = spectra.analyze(
        adapter.path, modules=["q", "k", "v"] if "rank_pattern" in options else None
    )
    spectra_by_key = _sigma_by_key(report)
    assert set(spectra_by_key) == set(adapter.reference)
    for key, delta in adapter.reference.items():
        _assert_spectrum_matches(spectra_by_key[key], delta)
    if "rank_pattern" in options:
        ranks = {
            key: row["numerical_rank"] for key, row in zip(spectra_by_key, report.rows, strict=True)
        }
        assert all(rank == (4 if key[1] == "k" else 8) for key, rank in ranks.items())
        assert report.meta["scales"]["L2.v"]["scale"] == 64 / 8
        assert "alpha_pattern" in report.meta["scales"]["L2.v"]["source"]
    else:
        assert report.meta["source"]["variant"] == "rsLoRA"
        assert report.rows[0]["scale"] == pytest.approx(8 / 2.0)


def test_lora_with_base_adds_relative_norm(lora_adapter, minilm_dir):
    report = spectra.analyze(lora_adapter.path, base=minilm_dir, layers=[0])
    base = load_file(str(minilm_dir / "model.safetensors"))
    for row in report.rows:
        name = {"k": "key", "v": "value"}[row["role"]]
        w0 = base[f"encoder.layer.0.attention.self.{name}.weight"].astype(np.float64)
        expected = np.linalg.norm(lora_adapter.reference[(0, row["role"])]) / np.linalg.norm(w0)
        assert row["relative_norm"] == pytest.approx(expected, rel=1e-9)


# ----------------------------------------------------------- full fine-tune


# Every layout in float32, bf16 and fp16 (base saved in the same dtype), and float64 pickles.
FT_CASES = [
    *((layout, dtype) for layout in ("single", "sharded", "bin") for dtype in DTYPES),
    ("bin", torch.float64),
    ("pt", torch.float64),  # a bare model.pt file
]
FT_LAYERS = [0, 3]


@pytest.fixture(scope="module", params=FT_CASES, ids=lambda case: f"{case[0]}-{dtype_id(case[1])}")
def finetune(request, finetunes):
    layout, dtype = request.param
    return dtype, finetunes(layout, dtype)


def _read_weights(path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file or folder, read with torch / safetensors (not spectra)."""
    if path.is_file():
        return torch.load(path, weights_only=True)
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", weights_only=True)
    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_torch_file(str(file)))
    return tensors


def _saved_difference(finetune, layers) -> dict[tuple[int, str], np.ndarray]:
    """W_ft − W_base in float64 per (layer, role), from the saved files."""
    tuned, base = _read_weights(finetune.path), _read_weights(finetune.base)
    differences = {}
    for layer, role in finetune.planted:
        if layer in layers:
            name = (
                f"encoder.layer.{layer}.attention.self.{ {'k': 'key', 'v': 'value'}[role] }.weight"
            )
            differences[layer, role] = tuned[name].double().numpy() - base[name].double().numpy()
    return differences


@pytest.mark.slow
def test_full_finetune_in_each_dtype_matches_numpy_on_saved_difference(finetune):
    """Single safetensors, sharded with an index, legacy .bin, bare .pt; σ against numpy."""
    dtype, ft = finetune
    differences = _saved_difference(ft, FT_LAYERS)
    expected = {key: reference_sigma(difference) for key, difference in differences.items()}
    planted = 0.5 * 0.7 ** np.arange(8)  # planted_update's singular values, by construction
    for method in ("fast", "exact"):
        report = spectra.analyze(ft.path, base=ft.base, method=method, layers=FT_LAYERS)
        assert report.meta["source"]["format"] == "full"
        assert {row["dtype"] for row in report.rows} == {dtype_id(dtype)}
        spectra_by_key = _sigma_by_key(report)
        assert set(spectra_by_key) == set(differences)
        for key, sigma in spectra_by_key.items():
            reference = expected[key]
            if method == "exact":
                np.testing.assert_allclose(sigma, reference, rtol=1e-10, atol=1e-13 * reference[0])
            else:
                accurate = reference >= 1e-5 * reference[0]
                np.testing.assert_allclose(sigma[accurate], reference[accurate], rtol=1e-6)
            # The saved difference is the planted update plus the dtype's rounding of W,
            # which moves each σ by at most ‖rounding‖₂ ≤ ‖rounding‖_F (Weyl).
            rounding = np.linalg.norm(differences[key] - ft.planted[key])
            np.testing.assert_allclose(sigma[:8], planted, rtol=0, atol=rounding + 1e-12)
        # That rounding of W must not count as rank.
        assert all(row["numerical_rank"] == 8 for row in report.rows), [
            row["numerical_rank"] for row in report.rows
        ]


@pytest.mark.slow
def test_full_finetune_read_twice_gives_the_same_right_update(finetune):
    """deltas() twice on one checkpoint: bit-identical reads, both W_ft − W_base exactly.

    A loader that subtracts in place into a tensor its reader caches (a float64
    pickle: ``.to(float64)`` is then no copy) returns ΔW − W_base the second time.
    """
    dtype, ft = finetune
    checkpoint = spectra.load(ft.path, base=ft.base)
    first = read_deltas(checkpoint, layers=FT_LAYERS)
    second = read_deltas(checkpoint, layers=FT_LAYERS)
    assert_same_reads(first, second)
    differences = _saved_difference(ft, FT_LAYERS)
    assert {(read.delta.layer, read.delta.role) for read in second} == set(differences)
    for read in second:
        assert read.delta.source_dtype == dtype
        reference = differences[read.delta.layer, read.delta.role]
        assert relative_error(read.dense, reference) < 1e-12, read.delta.key


def test_sharded_checkpoint_opens_only_the_shards_it_needs(tmp_path, minilm_dir, monkeypatch):
    from tests.helpers.models import make_bert_finetune

    finetune = make_bert_finetune(tmp_path / "ft", minilm_dir, "sharded")
    import spectra.loaders.storage.tensors as tensors

    opened = []
    original = tensors._SafetensorsFile._read_header

    def spy(self):
        opened.append(str(self.path))
        return original(self)

    monkeypatch.setattr(tensors._SafetensorsFile, "_read_header", spy)
    spectra.analyze(finetune.path, base=minilm_dir, layers=[0])
    shards = {p for p in opened if "model-0" in p}
    total = len(list(finetune.path.glob("model-*.safetensors")))
    assert 1 <= len(shards) < total


# --------------------------------------------------- other architectures


def _finetune_tiny(model, folder, base_folder, update):
    model.save_pretrained(str(base_folder))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in update:
                parameter += update[name]
    model.save_pretrained(str(folder))


def test_gpt2_fused_c_attn_is_split_in_conv1d_layout(tmp_path):
    torch.manual_seed(0)
    embed = 64
    model = tiny_gpt2(embed=embed, heads=4)
    update = {f"h.{i}.attn.c_attn.weight": 0.1 * torch.randn(embed, 3 * embed) for i in range(2)}
    _finetune_tiny(model, tmp_path / "ft", tmp_path / "base", update)
    report = spectra.analyze(
        tmp_path / "ft", base=tmp_path / "base", modules=["q", "k", "v"], method="exact"
    )
    assert len(report) == 6
    for row in report.rows:
        conv1d = update[f"h.{row['layer']}.attn.c_attn.weight"].double().numpy()  # (d_in, 3E)
        part = {"q": 0, "k": 1, "v": 2}[row["role"]]
        expected = conv1d.T[part * embed : (part + 1) * embed]  # (d_out, d_in) rows of the role
        _assert_spectrum_matches(report.spectrum(row["layer"], row["role"]), expected, rtol=1e-6)
        assert (row["d_out"], row["d_in"]) == (embed, embed)


def test_llama_gqa_key_value_shapes(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama(intermediate=128)
    kv = 64 // 8 * 2
    update = {
        f"layers.{i}.self_attn.{m}.weight": 0.1 * torch.randn(kv, 64)
        for i in range(2)
        for m in ("k_proj", "v_proj")
    }
    _finetune_tiny(model, tmp_path / "ft", tmp_path / "base", update)
    report = spectra.analyze(tmp_path / "ft", base=tmp_path / "base", method="exact")
    assert [(row["layer"], row["role"]) for row in report.rows] == [
        (0, "k"),
        (0, "v"),
        (1, "k"),
        (1, "v"),
    ]
    for row in report.rows:
        assert (row["d_out"], row["d_in"]) == (kv, 64)
        name = f"layers.{row['layer']}.self_attn.{row['role']}_proj.weight"
        _assert_spectrum_matches(
            report.spectrum(row["layer"], row["role"]), update[name].double().numpy(), 1e-6
        )


def test_bf16_finetune_does_not_count_rounding_as_rank(tmp_path, minilm_dir):
    """Saved in bf16, a rank-8 update still has numerical rank 8 (not ~384)."""
    from tests.helpers.models import load_bert, planted_update

    model = load_bert(minilm_dir).to(torch.bfloat16)
    model.save_pretrained(str(tmp_path / "base"))
    with torch.no_grad():
        for layer in range(MINILM_LAYERS):
            key = model.encoder.layer[layer].attention.self.key
            key.weight += torch.from_numpy(planted_update(384, 384, 8, seed=layer)).to(
                torch.bfloat16
            )
    model.save_pretrained(str(tmp_path / "ft"))
    report = spectra.analyze(tmp_path / "ft", base=tmp_path / "base", modules=["k"])
    assert {row["dtype"] for row in report.rows} == {"bfloat16"}
    assert [row["numerical_rank"] for row in report.rows] == [8] * MINILM_LAYERS
