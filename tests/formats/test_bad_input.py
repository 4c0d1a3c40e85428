"""The catalogue of bad input: each case is a SpectraError that names the file and the fix.

Also: degenerate but valid input gets defined numbers and a warning, an
interrupted run writes nothing, and fuzzing (metrics, names, corrupted
bytes) never gets past spectra as anything but a result or a SpectraError.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from spectra_cli.main import cli

import spectra
from spectra.errors import FormatError, NonFiniteError, SpectraError
from spectra.loaders.naming.architectures import map_modules
from spectra.metrics import compute


def _model(folder, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def _kv(layers=2, d=8, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return {
        f"model.layers.{i}.self_attn.{p}.weight": torch.randn(d, d, generator=generator).to(dtype)
        for i in range(layers)
        for p in ("k_proj", "v_proj")
    }


@pytest.fixture
def pair(tmp_path):
    return _model(tmp_path / "ft", _kv(seed=1)), _model(tmp_path / "base", _kv(seed=0))


def test_truncated_safetensors(pair):
    ft, base = pair
    data = (ft / "model.safetensors").read_bytes()
    (ft / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match=r"ft/model.safetensors: tensor .* the file is truncated"):
        spectra.analyze(ft, base=base)


def test_corrupted_safetensors_header(pair):
    ft, base = pair
    data = bytearray((ft / "model.safetensors").read_bytes())
    data[8:20] = b"#" * 12  # the JSON header starts at byte 8
    (ft / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"ft/model\.safetensors"):
        spectra.analyze(ft, base=base)


def test_index_pointing_at_a_missing_shard(tmp_path, pair):
    _, base = pair
    folder = tmp_path / "sharded"
    folder.mkdir()
    tensors = _kv(seed=2)
    save_file(tensors, str(folder / "model-00001-of-00002.safetensors"))
    weight_map = dict.fromkeys(tensors, "model-00001-of-00002.safetensors")
    weight_map["model.layers.1.self_attn.v_proj.weight"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(
        FormatError, match=r"model-00002-of-00002.safetensors: shard file is missing"
    ):
        spectra.analyze(folder, base=base)
    # The layers whose shard exists still analyse.
    assert len(spectra.analyze(folder, base=base, layers=[0])) == 2


def test_index_that_is_not_json(tmp_path):
    folder = tmp_path / "bad-index"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text("{")
    with pytest.raises(FormatError, match="weight_map"):
        spectra.load(folder)


def test_nan_weight_is_refused_by_name_unless_skipped(tmp_path, pair):
    _, base = pair
    tensors = _kv(seed=1)
    tensors["model.layers.1.self_attn.k_proj.weight"][2, 3] = float("nan")
    ft = _model(tmp_path / "nan", tensors)
    with pytest.raises(
        NonFiniteError, match=r"model.layers.1.self_attn.k_proj.weight.*skip_nonfinite=True"
    ) as refused:
        spectra.analyze(ft, base=base)
    assert str(refused.value).startswith(f"{ft}: ")  # the file, then the module
    report = spectra.analyze(ft, base=base, skip_nonfinite=True)
    assert [(r["layer"], r["role"]) for r in report.rows] == [(0, "k"), (0, "v"), (1, "v")]
    assert report.meta["skipped"] == ["L1.k"]
    assert any("not the whole selection" in w for w in report.warnings)
    result = CliRunner().invoke(cli, ["analyze", str(ft), "--base", str(base)])
    assert (
        result.exit_code == 1 and "NaN or Inf" in result.stderr and "Traceback" not in result.output
    )


def test_inf_in_a_lora_factor(tmp_path):
    folder = tmp_path / "lora"
    folder.mkdir()
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    B = torch.ones(8, 2)
    B[0, 0] = float("inf")
    tensors = {
        "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight": torch.ones(2, 8),
        "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight": B,
    }
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(NonFiniteError, match="k_proj"):
        spectra.analyze(folder)


def test_checkpoint_mixing_dtypes(tmp_path, pair):
    _, base = pair
    tensors = _kv(seed=1)
    tensors["model.layers.1.self_attn.v_proj.weight"] = tensors[
        "model.layers.1.self_attn.v_proj.weight"
    ].half()
    ft = _model(tmp_path / "mixed", tensors)
    with pytest.raises(FormatError, match=r"expected one dtype.*float32.*float16.*v_proj"):
        spectra.analyze(ft, base=base)
    assert len(spectra.analyze(ft, base=base, layers=[0])) == 2  # one dtype there


def test_base_of_another_architecture(tmp_path, pair, minilm_dir):
    ft, _ = pair
    expected = r"encoder.layer.0.attention.self.key has shape \(384, 384\).*is base= the model"
    with pytest.raises(SpectraError, match=expected):
        spectra.analyze(ft, base=minilm_dir)


def test_interrupted_run_writes_no_report(pair, tmp_path, monkeypatch):
    ft, base = pair
    import spectra.analysis.stream as analysis

    calls = []
    original = analysis._row

    def interrupting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(analysis, "_row", interrupting)
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["analyze", str(ft), "--base", str(base), "--out", str(out)])
    assert result.exit_code == 130 and "no report was written" in result.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_one_row_matrices_and_a_single_layer(tmp_path):
    tensors = {"model.layers.0.self_attn.k_proj.weight": torch.randn(1, 16)}
    ft = _model(tmp_path / "ft", tensors)
    base = _model(tmp_path / "base", {k: torch.zeros_like(v) for k, v in tensors.items()})
    report = spectra.analyze(ft, base=base, modules=["k"])
    row = report.rows[0]
    assert (row["d_out"], row["d_in"]) == (1, 16)
    assert row["spectral_norm"] == pytest.approx(
        float(torch.linalg.vector_norm(tensors["model.layers.0.self_attn.k_proj.weight"]))
    )
    assert (
        row["numerical_rank"] == 1
        and row["effective_rank"] == 1.0
        and row["normalized_entropy"] == 0.0
    )
    assert all(v is None or math.isfinite(v) for k, v in row.items() if isinstance(v, float))


# ---------------------------------------------------------------- fuzzing

extreme = st.one_of(
    st.just(0.0),
    st.floats(min_value=5e-324, max_value=1e-300),  # denormals and near them
    st.floats(min_value=0.0, max_value=1e30, allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(extreme, min_size=0, max_size=30), extra=st.integers(0, 5))
def test_metrics_are_finite_and_bounded_for_any_spectrum(values, extra):
    n = len(values) + extra
    result = compute(np.array(values, dtype=np.float64), (max(n, 1), max(n, 1) + 3))
    for name, value in result.items():
        assert value is None or math.isfinite(value), (name, value)
    assert 0.0 <= result["normalized_entropy"] <= 1.0
    assert 0.0 <= result["energy_entropy"] <= 1.0
    assert 0.0 <= result["gini"] <= 1.0
    assert 0.0 <= result["top_share@1"] <= 1.0
    assert 0.0 <= result["effective_rank"] <= max(n, 1) + 1e-9


name_part = st.sampled_from(
    [
        "model",
        "layers",
        "layer",
        "h",
        "blocks",
        "self_attn",
        "attention",
        "self",
        "k_proj",
        "key",
        "value",
        "v_proj",
        "query",
        "c_attn",
        "attn",
        "mlp",
        "up_proj",
        "0",
        "1",
        "17",
        "weight",
        "",
        "x.y",
    ]
)


@settings(max_examples=300, deadline=None)
@given(names=st.lists(st.lists(name_part, min_size=1, max_size=7).map(".".join), max_size=12))
def test_name_mapper_never_crashes(names):
    try:
        found = map_modules(names)
    except FormatError as exc:  # two names claiming one role is reported, not guessed
        assert "two modules claim" in str(exc)
        return
    for (layer, role), ref in found.items():
        assert ref.module in names and ref.layer == layer and ref.role == role


FUZZ_NAMES = {
    (0, "k"): "model.layers.0.self_attn.k_proj.weight",
    (0, "v"): "model.layers.0.self_attn.v_proj.weight",
}


def _read_independently(path) -> dict[str, torch.Tensor] | None:
    """The tensors as the safetensors library reads them, or None where it refuses the file."""
    try:
        return load_file(str(path))
    except Exception:  # SafetensorError, or what a garbled header makes the parser raise
        return None


def _fuzz_and_analyze(small_pair, data: bytes):
    """Write the fuzzed bytes, analyse, and check the outcome against safetensors + numpy.

    - a file safetensors refuses: a SpectraError that names the file;
    - a readable file with non-finite values: NonFiniteError naming the tensor;
    - a readable file with the original names, shapes and dtype: a report whose σ equal
      numpy's SVD of (tuned − base) read by safetensors;
    - any other readable file (a name, a shape or the dtype changed): a SpectraError, or a
      report holding every module whose original name is still there, each row equal to
      numpy on the tensor it names.
    """
    folder, base, _ = small_pair
    target = folder / "ft" / "model.safetensors"
    target.write_bytes(data)
    tuned = _read_independently(target)
    base_tensors = load_file(str(base / "model.safetensors"))
    try:
        report = spectra.analyze(folder / "ft", base=base, method="exact")
    except SpectraError as exc:
        if tuned is None:
            assert "ft/model.safetensors" in str(exc), str(exc)
            return "refused"
        if any(not torch.isfinite(t.double()).all() for t in tuned.values()):
            assert isinstance(exc, NonFiniteError), str(exc)
            return "non-finite"
        reference = load_file(str(folder / "original.safetensors"))
        unchanged = tuned.keys() == reference.keys() and all(
            (t.shape, t.dtype) == (reference[k].shape, reference[k].dtype) for k, t in tuned.items()
        )
        assert not unchanged, f"a valid file with only its values changed was refused: {exc}"
        return "other-refused"
    assert tuned is not None, "spectra analysed a file the safetensors library refuses"
    rows = {(row["layer"], row["role"]): row for row in report.rows}
    assert set(rows) <= set(FUZZ_NAMES)
    assert {key for key, name in FUZZ_NAMES.items() if name in tuned} <= set(rows)  # no drop
    for (layer, role), row in rows.items():
        # the tuned tensor the row names (a fuzzed name may still map to the role)
        named = {row["name"], f"{row['name']}.weight"}
        names = [k for k in tuned if k in named or any(k.endswith(f".{n}") for n in named)]
        assert len(names) == 1, (row["name"], list(tuned))
        difference = tuned[names[0]].double() - base_tensors[FUZZ_NAMES[layer, role]].double()
        expected = np.linalg.svd(difference.numpy(), compute_uv=False)
        np.testing.assert_allclose(
            report.spectrum(layer, role), expected, rtol=1e-9, atol=1e-12 * expected[0]
        )
    return "analysed"


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    base = _model(folder / "base", _kv(layers=1, d=4, seed=0))
    (folder / "ft").mkdir()
    save_file(_kv(layers=1, d=4, seed=1), str(folder / "original.safetensors"))
    return folder, base, (folder / "original.safetensors").read_bytes()


@pytest.mark.slow
@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6)
)
def test_corrupted_bytes_give_numpys_answer_or_an_error_naming_the_file(small_pair, flips):
    data = bytearray(small_pair[2])
    for position, value in flips:
        data[position % len(data)] = value
    _fuzz_and_analyze(small_pair, bytes(data))


@pytest.mark.slow
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(flips=st.lists(st.tuples(st.integers(0, 127), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzzed_values_in_a_valid_file_give_numpys_answer(small_pair, flips):
    """Bytes changed only in the tensor data: the file stays valid, so spectra must analyse
    it and agree with numpy, or refuse a NaN/Inf by name."""
    data = bytearray(small_pair[2])
    start = 8 + int.from_bytes(data[:8], "little")  # the data follows the JSON header
    assert len(data) - start == 2 * 4 * 4 * 4  # two 4×4 float32 tensors
    for position, value in flips:
        data[start + position] = value
    assert _fuzz_and_analyze(small_pair, bytes(data)) in ("analysed", "non-finite")


def test_random_bytes_in_a_pt_file_are_not_a_pickle_and_code_is_refused(tmp_path, pair):
    """A ``.pt`` of random bytes is "not a pickle"; a pickle that asks for code is refused as
    such (weights_only=True): two different faults, two different lines."""
    _, base = pair
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(FormatError, match=r"noise\.pt: not a PyTorch checkpoint: neither a zip"):
        spectra.analyze(noise, base=base)
    legacy = tmp_path / "legacy.pt"
    state = {name: tensor for name, tensor in _kv(seed=1).items()}
    torch.save(state, legacy, _use_new_zipfile_serialization=False)  # a pickle, no zip
    assert len(spectra.analyze(legacy, base=base)) == 4  # a real legacy pickle still reads
    code = tmp_path / "code.pt"
    torch.save({**state, "hook": math.gcd}, code, _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError, match=r"code\.pt: refused to unpickle: it asks for code"):
        spectra.analyze(code, base=base)


def test_messages_use_an_before_a_vowel(tmp_path, pair):
    """The noun a writer names takes its article: "an adapter folder", "an HTML report"."""
    from spectra.errors import ReportExistsError
    from spectra.io.atomic import OUTPUT_MARKER, check_output, holds

    out = tmp_path / "adapter-out"
    out.mkdir()
    (out / OUTPUT_MARKER).write_text("{}")
    with pytest.raises(ReportExistsError, match=r": an adapter folder is already there"):
        check_output(out, False, "adapter folder", holds(OUTPUT_MARKER))
    with pytest.raises(ReportExistsError, match=r": a report is already there"):
        check_output(out, False, "report", holds(OUTPUT_MARKER))
    with pytest.raises(ReportExistsError, match=r"is a folder, not an HTML report file"):
        check_output(out, True, "HTML report", lambda path: True, folder=False)
