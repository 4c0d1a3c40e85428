"""FourierFT, WaveFT, C3A, SHiRA, MiSS (and Bone), GraLoRA made by peft 0.21, against its merge.

Each case is made once with real peft on MiniLM (k and v of layers 0 and 1,
every trainable tensor random) and saved in float32, bfloat16 and float16.
The reference of each file is peft's own: peft loads the file into a float64
model and each adapted layer's ``merge`` adds its ΔW to W0, which is taken
off again. Where peft's merge computes in float32 whatever the model's dtype
(FourierFT's ``ifft2``, C3A's FFTs), the float64 reference is the same
formula on what peft loaded, in float64: numpy's ``ifft2`` at peft's own
indices and scaling for FourierFT, peft's own ``get_circulant_fast`` of the
float64 kernel for C3A; peft's merge itself is then checked to agree to
float32 precision.
"""

from __future__ import annotations

import doctest
import importlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import spectra
from spectra.delta import Dense, Factored
from spectra.errors import FormatError, MissingBaseError
from spectra.loaders.naming.architectures import canonical_name
from tests.helpers.adapters import random_peft_model
from tests.helpers.checks import (
    DTYPES,
    assert_same_reads,
    dtype_id,
    read_deltas,
    reference_sigma,
    relative_error,
)
from tests.helpers.models import MINILM_LAYERS, ROLE_MODULES
from tests.helpers.peft_methods import file_dtypes, float_dtypes

TARGET = {"target_modules": ["key", "value"], "layers_to_transform": [0, 1]}
SHIRA_TARGET = r".*encoder\.layer\.[01]\.attention\.self\.(key|value)"  # no layers_to_transform


def _config(case: str):
    import peft

    return {
        "fourierft": lambda: peft.FourierFTConfig(n_frequency=200, scaling=150.0, **TARGET),
        "waveft": lambda: peft.WaveFTConfig(n_frequency=300, wavelet_family="db3", **TARGET),
        "c3a": lambda: peft.C3AConfig(block_size=64, **TARGET),
        "shira": lambda: peft.ShiraConfig(r=4, target_modules=SHIRA_TARGET),
        "miss": lambda: peft.MissConfig(r=7, **TARGET),  # 384 = 54·7 + 6: a shorter last block
        "miss_bat": lambda: peft.MissConfig(r=8, init_weights="bat", **TARGET),
        "miss_mini": lambda: peft.MissConfig(r=8, init_weights="mini", mini_r=32, **TARGET),
        "gralora": lambda: peft.GraloraConfig(r=8, gralora_k=2, hybrid_r=4, alpha=16, **TARGET),
    }[case]()


# What each case rebuilds: the update type, and whether analysing needs the base.
KIND = {
    "fourierft": (Dense, True),
    "waveft": (Dense, True),
    "c3a": (Dense, False),
    "shira": (Dense, True),
    "miss": (Factored, True),
    "miss_bat": (Dense, True),
    "miss_mini": (Factored, True),
    "gralora": (Factored, False),
}


def _adapted_layers(model):
    """(layer, role) → the peft layer of each adapted module."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found = {}
    for layer in range(MINILM_LAYERS):
        attention = model.base_model.model.encoder.layer[layer].attention.self
        for role, name in ROLE_MODULES.items():
            module = getattr(attention, name)
            if isinstance(module, BaseTunerLayer):
                found[(layer, role)] = module
    return found


def _float64_formula(case: str, module) -> np.ndarray | None:
    """peft's formula in float64 where its merge computes in float32; None elsewhere."""
    if case == "fourierft":
        rows, columns = module.indices["default"].numpy()
        spectrum = np.zeros((module.out_features, module.in_features), dtype=np.complex128)
        spectrum[rows, columns] = module.fourierft_spectrum["default"].detach().double().numpy()
        return np.fft.ifft2(spectrum).real * module.fourierft_scaling["default"]
    if case == "c3a":
        from peft.tuners.c3a.utils import get_circulant_fast

        kernel = module.c3a_kernel["default"].detach().double()
        return (get_circulant_fast(kernel) / module.in_features).numpy()
    return None


def _peft_references(case: str, model, path) -> tuple[dict, dict]:
    """peft's float64 reference and its own merge, per (layer, role), of one saved file."""
    from peft import set_peft_model_state_dict

    # peft's own load of the file into the float64 model: the saved values, widened exactly
    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    references, merged = {}, {}
    for key, module in _adapted_layers(model).items():
        base = module.get_base_layer()
        original = base.weight.detach().clone()  # W0, float64
        module.merge()
        merged[key] = (base.weight.detach() - original).numpy().copy()
        base.weight.data = original  # W0 again, for the next file
        module.merged_adapters.clear()
        formula = _float64_formula(case, module)
        references[key] = merged[key] if formula is None else formula
    return references, merged


def _make(case: str, folder, base) -> tuple[dict, dict]:
    """Make one case with peft, save it in each dtype; its folders and references by dtype.

    The references load each file back into the same peft model, widened to
    float64 (MiniLM's float32 W0 widens exactly, as a float64 load of it gives).
    """
    model = random_peft_model(base, _config(case), seed=5)
    trained = {
        name: parameter.detach().clone()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }
    folders = {}
    for dtype in DTYPES:  # peft saves the adapter's tensors as they are held
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in trained:
                    parameter.data = trained[name].to(dtype)
        folders[dtype] = folder / dtype_id(dtype)
        model.save_pretrained(str(folders[dtype]))
    model.double()
    references = {dtype: _peft_references(case, model, path) for dtype, path in folders.items()}
    return folders, references


@pytest.fixture(scope="module")
def made(tmp_path_factory, minilm_dir):
    """``made(case)``: its folders and references by dtype, each case made once."""
    cache = {}

    def get(case: str) -> tuple[dict, dict]:
        if case not in cache:
            cache[case] = _make(case, tmp_path_factory.mktemp(case), minilm_dir)
        return cache[case]

    return get


def _assert_every_tensor_accounted_for(checkpoint, folder) -> None:
    """Each tensor of the file belongs to an analysed module, or is listed with a reason."""
    analysed = {m.name for m in checkpoint.describe().modules}
    left_out = dict(checkpoint.not_analysed())
    for name in file_dtypes(folder):
        if name in left_out:
            assert left_out[name], name
        else:
            module = canonical_name(name)
            assert any(module.startswith(f"{m}.") for m in analysed), name


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", list(KIND))
def test_rebuild_matches_peft_merge(made, minilm_dir, case, dtype):
    folders, references = made(case)
    folder = folders[dtype]
    reference, merged = references[dtype]
    assert float_dtypes(folder) == {dtype}  # the premise: peft wrote the file in this dtype
    assert len(reference) == 4 and all(np.linalg.norm(r) > 0 for r in reference.values())

    checkpoint = spectra.load(folder, base=minilm_dir)
    first, second = read_deltas(checkpoint), read_deltas(checkpoint)
    assert_same_reads(first, second)
    assert {(read.delta.layer, read.delta.role) for read in first} == set(reference)
    for read in first:
        key = (read.delta.layer, read.delta.role)
        assert type(read.delta.update) is KIND[case][0]
        assert relative_error(read.dense, reference[key]) < 1e-10, (case, key)
        # peft's merge is the reference, or (FourierFT, C3A) its float32 computation of it
        float32_merge = case in ("fourierft", "c3a")
        assert relative_error(merged[key], reference[key]) < (1e-6 if float32_merge else 1e-10)
    _assert_every_tensor_accounted_for(checkpoint, folder)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", list(KIND))
def test_singular_values_match_numpy(made, minilm_dir, case, dtype):
    folders, references = made(case)
    reference = references[dtype][0]
    report = spectra.analyze(folders[dtype], base=minilm_dir, method="exact")
    assert len(report.rows) == len(reference)
    for row in report.rows:
        sigma = report.spectrum(row["layer"], row["role"])
        expected = reference_sigma(reference[(row["layer"], row["role"])])
        floor = 1e-10 * expected[0]
        np.testing.assert_allclose(sigma, expected[: len(sigma)], rtol=0, atol=floor)
        assert np.all(expected[len(sigma) :] <= floor)  # a factored ΔW's zeros


@pytest.mark.parametrize("case", list(KIND))
def test_the_base_is_needed_where_the_shape_or_w0_is(made, case, tmp_path):
    folders, references = made(case)
    expected = reference_sigma(references[torch.float32][0][(0, "k")])
    # peft wrote base_model_name_or_path = the MiniLM folder: found without base=
    report = spectra.analyze(folders[torch.float32], layers=[0], modules=["k"], method="exact")
    sigma = report.spectrum(0, "k")
    np.testing.assert_allclose(sigma, expected[: len(sigma)], rtol=0, atol=1e-9 * expected[0])
    folder = tmp_path / case
    shutil.copytree(folders[torch.float32], folder)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "nowhere/to-be-found"
    config_path.write_text(json.dumps(config))
    if KIND[case][1]:
        with pytest.raises(MissingBaseError, match=r"adapter_config.json: .*base=DIR"):
            spectra.analyze(folder)
        with pytest.raises(MissingBaseError, match="base=DIR"):
            list(spectra.load(folder).deltas())
        info = spectra.load(folder).describe()
        assert all(m.shape[1] is None for m in info.modules)
        assert any("comes from the base model" in w for w in info.warnings)
    else:  # the shapes are in the file and W0 is not used
        report = spectra.analyze(folder, layers=[0], modules=["k"], method="exact")
        np.testing.assert_array_equal(report.spectrum(0, "k"), sigma)


@pytest.mark.parametrize("case", ["miss", "miss_bat"])
def test_bone_reads_as_miss(made, minilm_dir, tmp_path, case):
    """Bone, MiSS's older name, saved ``bone_block`` with MiSS's default and bat formulas."""
    folders, references = made(case)
    folder = tmp_path / "bone"
    folder.mkdir()
    config = json.loads((folders[torch.float32] / "adapter_config.json").read_text())
    config = {k: v for k, v in config.items() if k != "mini_r"} | {"peft_type": "BONE"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(str(folders[torch.float32] / "adapter_model.safetensors"))
    renamed = {name.replace("miss_block", "bone_block"): t for name, t in tensors.items()}
    save_file(renamed, str(folder / "adapter_model.safetensors"))
    checkpoint = spectra.load(folder, base=minilm_dir)
    assert checkpoint.variant == ("Bone" if case == "miss" else "Bone (bat)")
    for delta in checkpoint.deltas():
        expected = references[torch.float32][0][(delta.layer, delta.role)]
        assert relative_error(delta.update.to_dense().numpy(), expected) < 1e-10


DISAGREEING = {  # case → (config field, a value the tensors contradict, the error)
    "fourierft": ("n_frequency", 150, r"fourierft_spectrum \(150,\) for n_frequency"),
    "waveft": ("n_frequency", 150, r"waveft_spectrum \(150,\) for n_frequency"),
    "c3a": ("block_size", 32, r"c3a_kernel .*32\) for block_size = 32"),
    "miss": ("r", 8, r"miss_block \(8, d_out\) for r = 8.*found \(7, 384\)"),
    "miss_bat": ("r", 4, r"miss_block \(d_out/4, 4, 4\)"),
    "miss_mini": ("mini_r", 16, r"miss_block \(8, 16\) for r = 8, mini_r = 16"),
    "gralora": ("gralora_k", 4, r"gralora_A \(4, d_in/4, 8\)"),
}


@pytest.mark.parametrize("case", list(DISAGREEING))
def test_a_config_that_disagrees_with_the_tensors_is_an_error(made, tmp_path, case):
    folders, _ = made(case)
    field, value, message = DISAGREEING[case]
    folder = tmp_path / case
    shutil.copytree(folders[torch.float32], folder)
    config = json.loads((folder / "adapter_config.json").read_text()) | {field: value}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(FormatError, match=message):
        spectra.load(folder)


def test_shira_indices_outside_the_base_are_an_error(made, tmp_path, minilm_dir):
    """SHiRA's shape comes from the base: indices beyond it mean another base."""
    folders, _ = made("shira")
    folder = tmp_path / "shira"
    shutil.copytree(folders[torch.float32], folder)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    name = next(n for n in tensors if n.endswith("layer.0.attention.self.key.shira_indices"))
    tensors[name] = tensors[name].clone()
    tensors[name][1, 0] = 384  # one column past d_in
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(FormatError, match=r"shira_indices should be whole numbers within .*384"):
        spectra.analyze(folder, base=minilm_dir, layers=[0], modules=["k"])


def test_waveft_filters_and_transform_are_peft_s():
    """Every filter peft 0.21 has, and one level of its inverse transform, odd and even shapes."""
    from peft.tuners.waveft.constants import WAVELET_REDUCTIONS
    from peft.tuners.waveft.wavelet import Wavelet
    from peft.tuners.waveft.waverec2d import waverec2d

    from spectra.loaders.methods import waveft
    from spectra.loaders.methods.waveft_filters import LOW_PASS, UNSUPPORTED, high_pass

    generator = torch.Generator().manual_seed(0)
    for family, low_pass in LOW_PASS.items():
        assert low_pass == tuple(Wavelet(family).rec_lo), family
        assert high_pass(low_pass) == tuple(Wavelet(family).rec_hi), family
        assert WAVELET_REDUCTIONS[family] == (len(low_pass) - 2,) * 2, family
        for d_out, d_in in ((12, 9), (7, 16)):
            values = torch.randn(20, generator=generator, dtype=torch.float64)
            rows, columns = waveft.spectrum_indices(d_out, d_in, 20, 3)
            reduction = WAVELET_REDUCTIONS[family][0]
            padded = [d + reduction + (d + reduction) % 2 for d in (d_out, d_in)]
            spectrum = torch.zeros(padded, dtype=torch.float64)
            spectrum[rows + (padded[0] - d_out) // 2, columns + (padded[1] - d_in) // 2] = values
            h, w = padded[0] // 2, padded[1] // 2
            quadrants = (spectrum[h:, :w], spectrum[:h, w:], spectrum[h:, w:])
            full = waverec2d((spectrum[:h, :w], (quadrants[1], quadrants[0], quadrants[2])), family)
            top, left = (full.shape[0] - d_out) // 2, (full.shape[1] - d_in) // 2
            expected = 2.5 * full[top : top + d_out, left : left + d_in]
            rebuilt = waveft.delta(values, (d_out, d_in), 3, 2.5, family).matrix
            assert relative_error(rebuilt.numpy(), expected.numpy()) < 1e-13, family
    # coif5: peft's filter is longer than its padding, so its merge cannot fit the layer
    assert len(Wavelet("coif5").rec_lo) - 2 != WAVELET_REDUCTIONS["coif5"][0]
    assert set(UNSUPPORTED) == {"coif5"}


@pytest.mark.parametrize("family", ["coif5", "db20"])
def test_waveft_families_peft_cannot_merge_are_refused(made, tmp_path, family):
    folders, _ = made("waveft")
    folder = tmp_path / family
    shutil.copytree(folders[torch.float32], folder)
    config = json.loads((folder / "adapter_config.json").read_text()) | {"wavelet_family": family}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(FormatError, match=rf"wavelet_family '{family}' cannot be rebuilt: peft"):
        spectra.load(folder)


@pytest.mark.parametrize("name", ["fourierft", "waveft", "c3a", "shira", "miss", "gralora"])
def test_the_formula_examples_run(name):
    module = importlib.import_module(f"spectra.loaders.methods.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 1 and result.failed == 0, name
