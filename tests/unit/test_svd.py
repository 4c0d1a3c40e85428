"""The SVD engine against numpy's float64 SVD of the merged matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectra import Dense, Factored, LayerDelta, singular_values
from spectra.errors import DeviceError, SpectraError
from spectra.svd import accuracy_floor, resolve_device
from tests.helpers.checks import reference_sigma

FACTORED_CASES = [
    # (d_out, d_in, r, scale)
    (384, 384, 8, 2.0),
    (64, 256, 16, 0.5),  # GQA k/v: fewer outputs than inputs
    (512, 96, 8, -1.5),  # tall; a negative scale gives the same σ
    (32, 48, 64, 1.0),  # r larger than both dimensions
    (200, 300, 1, 3.0),
]


def _random_factors(d_out, d_in, r, seed):
    generator = torch.Generator().manual_seed(seed)
    B = torch.randn(d_out, r, generator=generator)  # (d_out, r)
    A = torch.randn(r, d_in, generator=generator)  # (r, d_in)
    return B, A


@pytest.mark.parametrize(("d_out", "d_in", "r", "scale"), FACTORED_CASES)
def test_factored_matches_numpy_on_every_singular_value(d_out, d_in, r, scale):
    B, A = _random_factors(d_out, d_in, r, seed=d_out + r)
    sigma = singular_values(Factored(B, A, scale), device="cpu").numpy()
    merged = scale * (B.double().numpy() @ A.double().numpy())
    expected = reference_sigma(merged)
    k = min(r, d_out, d_in)
    assert sigma.shape == (k,)
    np.testing.assert_allclose(sigma, expected[:k], rtol=1e-10, atol=0)
    # Everything beyond the inner dimension is zero in the reference too.
    assert np.all(expected[k:] <= 1e-12 * expected[0])


def test_factored_never_merges(monkeypatch):
    """The factored path works on r×r cores: a (d_out, d_in) matmul never happens."""
    B, A = _random_factors(2048, 2048, 8, seed=1)
    original_matmul = torch.Tensor.__matmul__

    def guarded(self, other):
        result = original_matmul(self, other)
        assert result.shape[0] < 2048 or result.shape[-1] < 2048, "ΔW was materialised"
        return result

    monkeypatch.setattr(torch.Tensor, "__matmul__", guarded)
    sigma = singular_values(Factored(B, A, 1.0), device="cpu")
    assert sigma.shape == (8,)


def test_factored_with_exactly_zero_b_gives_zero_spectrum():
    B = torch.zeros(64, 8)
    A = torch.randn(8, 32)
    sigma = singular_values(Factored(B, A, 2.0), device="cpu")
    assert torch.count_nonzero(sigma) == 0


def _planted(d_out, d_in, values, seed):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((d_out, len(values))))
    V, _ = np.linalg.qr(rng.standard_normal((d_in, len(values))))
    return (U * values) @ V.T


DENSE_SHAPES = [(384, 384), (64, 256), (300, 120)]


@pytest.mark.slow
@pytest.mark.parametrize(("d_out", "d_in"), DENSE_SHAPES)
def test_dense_exact_matches_numpy(d_out, d_in):
    matrix = np.random.default_rng(d_out).standard_normal((d_out, d_in))
    sigma = singular_values(Dense(torch.from_numpy(matrix)), device="cpu", method="exact").numpy()
    np.testing.assert_allclose(sigma, reference_sigma(matrix), rtol=1e-10, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize(("d_out", "d_in"), DENSE_SHAPES)
def test_dense_fast_within_its_stated_accuracy(d_out, d_in):
    """Gram eigenvalues: ≤ 1e-6 relative for σ_i ≥ 1e-5·σ_1 (docs/accuracy.md)."""
    n = min(d_out, d_in)
    values = np.logspace(0, -7, n)  # spans far below the accurate range on purpose
    matrix = _planted(d_out, d_in, values, seed=n)
    sigma = singular_values(Dense(torch.from_numpy(matrix)), device="cpu").numpy()
    expected = reference_sigma(matrix)
    assert sigma.shape == (n,)
    accurate = expected >= 1e-5 * expected[0]
    assert accurate.sum() > n // 2
    relative = np.abs(sigma[accurate] - expected[accurate]) / expected[accurate]
    assert relative.max() <= 1e-6
    # Below that, values are noise bounded by the stated floor, never wildly wrong.
    floor = accuracy_floor((d_out, d_in), "dense", "fast") * expected[0]
    assert np.all(np.abs(sigma - expected) <= floor + 1e-6 * expected)


def test_dense_fast_float32_input_matches_float64_reference():
    matrix = torch.randn(128, 256)  # float32 input is promoted, never computed in float32
    sigma = singular_values(Dense(matrix), device="cpu").numpy()
    expected = reference_sigma(matrix.double().numpy())
    np.testing.assert_allclose(sigma, expected, rtol=1e-9)


def test_layer_delta_is_accepted_and_result_is_float64_cpu_descending():
    B, A = _random_factors(40, 50, 6, seed=3)
    delta = LayerDelta(
        layer=0, role="k", name="x", update=Factored(B, A, 1.0), source_dtype=B.dtype
    )
    sigma = singular_values(delta)
    assert sigma.dtype == torch.float64 and sigma.device.type == "cpu"
    assert torch.all(sigma[:-1] >= sigma[1:])


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine where PyTorch sees no CUDA GPU, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _factored_case() -> tuple[Factored, np.ndarray]:
    B, A = _random_factors(60, 45, 5, seed=11)
    return Factored(B, A, -1.25), -1.25 * (B.double().numpy() @ A.double().numpy())


def test_auto_runs_on_the_cpu_where_there_is_no_gpu_and_equals_numpy(no_gpu):
    assert resolve_device("auto") == torch.device("cpu")
    update, merged = _factored_case()
    sigma = singular_values(update, device="auto")
    assert sigma.device == torch.device("cpu") and sigma.dtype == torch.float64
    np.testing.assert_allclose(sigma.numpy(), reference_sigma(merged)[:5], rtol=1e-10)
    matrix = np.random.default_rng(2).standard_normal((70, 50))
    dense = singular_values(Dense(torch.from_numpy(matrix)), device="auto", method="exact")
    np.testing.assert_allclose(dense.numpy(), reference_sigma(matrix), rtol=1e-10)


def test_auto_chooses_the_gpu_where_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit cpu stays the cpu


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3", torch.device("cuda")])
def test_cuda_without_a_gpu_is_an_error_naming_the_flag(no_gpu, device):
    with pytest.raises(DeviceError, match=r"sees no CUDA GPU; use device='cpu' or device='auto'"):
        resolve_device(device)
    with pytest.raises(DeviceError, match="device='cpu'"):
        singular_values(Dense(torch.eye(3)), device=device)


def test_cli_with_device_cuda_and_no_gpu_says_which_flag_in_one_line(no_gpu, tmp_path):
    from click.testing import CliRunner
    from safetensors.torch import save_file
    from spectra_cli.main import cli

    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4}')
    B, A = _random_factors(16, 16, 2, seed=5)
    prefix = "base_model.model.model.layers.0.self_attn.k_proj"
    save_file(
        {f"{prefix}.lora_A.weight": A, f"{prefix}.lora_B.weight": B},
        str(folder / "adapter_model.safetensors"),
    )
    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli, ["analyze", str(folder), "--device", "cuda", "--out", str(out), "--quiet"]
    )
    assert result.exit_code == 1, result.output
    assert "--device cpu" in result.stderr and "Traceback" not in result.output
    assert not out.exists()
    ok = CliRunner().invoke(cli, ["analyze", str(folder), "--device", "auto", "--out", str(out)])
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize(
    "device", ["auto", "cpu", *(["cuda"] if torch.cuda.is_available() else [])]
)
def test_results_on_each_usable_device_equal_numpy(device):
    """σ computed on the resolved device comes back as float64 on the CPU, equal to numpy."""
    update, merged = _factored_case()
    sigma = singular_values(update, device=device)
    assert sigma.device == torch.device("cpu") and sigma.dtype == torch.float64
    np.testing.assert_allclose(sigma.numpy(), reference_sigma(merged)[:5], rtol=1e-10)
    matrix = _planted(90, 60, np.logspace(0, -3, 20), seed=3)
    for method in ("fast", "exact"):
        dense = singular_values(Dense(torch.from_numpy(matrix)), device=device, method=method)
        expected = reference_sigma(matrix)
        accurate = expected >= 1e-5 * expected[0]
        assert accurate.sum() == 20
        rtol = 1e-10 if method == "exact" else 1e-7  # the Gram path squares the range
        np.testing.assert_allclose(dense.numpy()[accurate], expected[accurate], rtol=rtol)
        assert np.all(dense.numpy()[~accurate] <= 1e-6 * expected[0])


def test_unknown_device_and_method_are_errors():
    with pytest.raises(DeviceError, match="device="):
        resolve_device("tpu")
    with pytest.raises(SpectraError, match="fast, exact"):
        singular_values(Dense(torch.eye(3)), device="cpu", method="approximate")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("method", ["fast", "exact"])
def test_a_plain_tensor_is_read_as_the_dense_update(dtype, method):
    """``spectra.singular_values(tensor)``, as the README writes it, against numpy's SVD."""
    generator = torch.Generator().manual_seed(11)
    matrix = torch.randn(48, 80, generator=generator).to(dtype)  # (d_out, d_in)
    sigma = singular_values(matrix, method=method)
    expected = np.linalg.svd(matrix.double().numpy(), compute_uv=False)
    assert sigma.dtype == torch.float64 and sigma.shape == (48,)
    np.testing.assert_allclose(sigma.numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("tensor", "found"),
    [
        (torch.ones(3, 4, 5), "3-D float32 of shape (3, 4, 5)"),
        (torch.ones(4, dtype=torch.int64), "1-D int64 of shape (4,)"),
    ],
)
def test_a_tensor_that_is_not_a_matrix_is_refused(tensor, found):
    with pytest.raises(SpectraError, match=r"expected ΔW as a 2-D floating-point") as error:
        singular_values(tensor)
    assert found in str(error.value)


def test_a_tensor_with_nan_is_refused():
    matrix = torch.ones(4, 4)
    matrix[1, 2] = float("nan")
    with pytest.raises(SpectraError, match="NaN or Inf"):
        singular_values(matrix)
