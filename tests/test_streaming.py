"""Streaming: read-ahead and batching change nothing in the results."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import spectra
from spectra import Dense, LayerDelta
from spectra.svd import dense_gram_batched, read_ahead, singular_values, singular_values_stream

from .conftest import reference_sigma


def _dense_deltas(shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        LayerDelta(
            i,
            "k",
            f"m{i}",
            Dense(torch.randn(*shape, generator=generator, dtype=torch.float64)),
            torch.float32,
        )
        for i, shape in enumerate(shapes)
    ]


def test_batched_gram_equals_one_at_a_time():
    matrices = [delta.update.matrix for delta in _dense_deltas([(48, 96)] * 5)]
    batched = dense_gram_batched(matrices, "cpu")
    for matrix, sigma in zip(matrices, batched, strict=True):
        single = singular_values(Dense(matrix), device="cpu")
        np.testing.assert_allclose(sigma.numpy(), single.numpy(), rtol=1e-10, atol=0)
        np.testing.assert_allclose(sigma.numpy(), reference_sigma(matrix.numpy()), rtol=1e-9)


@pytest.mark.parametrize(("prefetch", "batch_size"), [(0, 1), (1, 1), (2, 3), (1, 8)])
def test_stream_keeps_order_and_values(prefetch, batch_size):
    deltas = _dense_deltas([(32, 64), (32, 64), (32, 64), (64, 32), (32, 64), (16, 16)])
    streamed = list(singular_values_stream(deltas, "cpu", prefetch=prefetch, batch_size=batch_size))
    assert [delta.layer for delta, _ in streamed] == list(range(len(deltas)))
    for delta, sigma in streamed:
        np.testing.assert_allclose(sigma.numpy(), singular_values(delta, "cpu").numpy(), rtol=1e-10)


def test_streamed_and_unstreamed_reports_are_identical(bert_finetune, lora_adapter):
    for path, base in ((bert_finetune.path, bert_finetune.base), (lora_adapter.path, None)):
        plain = spectra.analyze(path, base=base, prefetch=0)
        streamed = spectra.analyze(path, base=base, prefetch=2)
        assert streamed.rows == plain.rows
        assert all(np.array_equal(streamed.spectra[k], plain.spectra[k]) for k in plain.spectra)
        batched = spectra.analyze(path, base=base, prefetch=2, batch_size=4)
        for key, sigma in plain.spectra.items():
            # Values above the Gram path's noise floor √(n·ε₆₄)·σ_1 agree to 1e-10; below
            # it both are rounding noise, within that floor of each other.
            floor = np.sqrt(sigma.size * np.finfo(np.float64).eps) * sigma[0]
            signal = sigma > 10 * floor
            np.testing.assert_allclose(batched.spectra[key][signal], sigma[signal], rtol=1e-10)
            assert np.all(np.abs(batched.spectra[key] - sigma) <= floor)


def test_read_ahead_raises_the_producers_error_in_the_consumer():
    def items():
        yield 1
        raise RuntimeError("disk gone")

    seen = []
    with pytest.raises(RuntimeError, match="disk gone"):
        for item in read_ahead(items()):
            seen.append(item)
    assert seen == [1]


def test_read_ahead_stops_its_thread_when_the_consumer_stops():
    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    for item in read_ahead(items(), depth=2):
        if item == 3:
            break
    assert not any(t.name == "spectra-read-ahead" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 3 + 2 + 2  # what was consumed, the queue, one in flight
