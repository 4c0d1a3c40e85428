"""The SVD engine against numpy's float64 SVD of the merged matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectra import Dense, Factored, LayerDelta, singular_values
from spectra.errors import DeviceError, SpectraError
from spectra.svd import accuracy_floor, resolve_device

from .conftest import reference_sigma

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


@pytest.mark.parametrize(("d_out", "d_in"), DENSE_SHAPES)
def test_dense_exact_matches_numpy(d_out, d_in):
    matrix = np.random.default_rng(d_out).standard_normal((d_out, d_in))
    sigma = singular_values(Dense(torch.from_numpy(matrix)), device="cpu", method="exact").numpy()
    np.testing.assert_allclose(sigma, reference_sigma(matrix), rtol=1e-10, atol=0)


@pytest.mark.parametrize(("d_out", "d_in"), DENSE_SHAPES)
def test_dense_fast_within_its_stated_accuracy(d_out, d_in):
    """Gram eigenvalues: ≤ 1e-6 relative for σ_i ≥ 1e-5·σ_1 (DESIGN.md numerics)."""
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


def test_auto_device_is_cpu_without_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(DeviceError, match="--device cpu"):
        singular_values(Dense(torch.eye(3)), device="cuda")


def test_unknown_device_and_method_are_errors():
    with pytest.raises(DeviceError, match="--device"):
        resolve_device("tpu")
    with pytest.raises(SpectraError, match="fast, exact"):
        singular_values(Dense(torch.eye(3)), device="cpu", method="approximate")
