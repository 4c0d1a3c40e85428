"""Streaming: read-ahead, side-by-side decomposition and batching change nothing in the results."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import spectra
from spectra import Dense, LayerDelta
from spectra.io.workers import ordered_map, read_ahead
from spectra.loaders.methods.full import difference
from spectra.svd import (
    _lower_gram,
    dense_gram_batched,
    singular_values,
    singular_values_stream,
)
from tests.helpers.checks import reference_sigma


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


def _assert_same_above_floor(spectra_a: dict, spectra_b: dict) -> None:
    assert spectra_a.keys() == spectra_b.keys()
    for key, sigma in spectra_b.items():
        # Values above the Gram path's noise floor √(n·ε₆₄)·σ_1 agree to 1e-10; below
        # it both are rounding noise, within that floor of each other.
        floor = np.sqrt(sigma.size * np.finfo(np.float64).eps) * sigma[0]
        signal = sigma > 10 * floor
        np.testing.assert_allclose(spectra_a[key][signal], sigma[signal], rtol=1e-10)
        assert np.all(np.abs(spectra_a[key] - sigma) <= floor)


@pytest.mark.slow
def test_streamed_and_unstreamed_reports_are_identical(bert_finetune, lora_adapter):
    for path, base in ((bert_finetune.path, bert_finetune.base), (lora_adapter.path, None)):
        plain = spectra.analyze(path, base=base, prefetch=0, jobs=1)
        streamed = spectra.analyze(path, base=base, prefetch=2, jobs=1)
        assert streamed.rows == plain.rows
        assert all(np.array_equal(streamed.spectra[k], plain.spectra[k]) for k in plain.spectra)
        batched = spectra.analyze(path, base=base, prefetch=2, batch_size=4, jobs=1)
        _assert_same_above_floor(batched.spectra, plain.spectra)
        # Side by side: the same modules in the same order, σ equal up to the rounding
        # that another thread count brings, and exactly repeatable for one job count.
        side_by_side = spectra.analyze(path, base=base, jobs=2)
        assert [row["name"] for row in side_by_side.rows] == [row["name"] for row in plain.rows]
        _assert_same_above_floor(side_by_side.spectra, plain.spectra)
        again = spectra.analyze(path, base=base, jobs=2)
        assert again.rows == side_by_side.rows


@pytest.mark.parametrize("jobs", [2, 3])
def test_side_by_side_stream_against_numpy(jobs):
    shapes = [(40, 90), (90, 40), (64, 64), (40, 90), (7, 300), (33, 33), (50, 20)]
    deltas = _dense_deltas(shapes, seed=3)
    threads = torch.get_num_threads()
    streamed = list(singular_values_stream(deltas, "cpu", jobs=jobs))
    assert torch.get_num_threads() == threads  # the workers' thread count is undone
    assert [delta.layer for delta, _ in streamed] == list(range(len(shapes)))
    for delta, sigma in streamed:
        reference = reference_sigma(delta.update.matrix.numpy())
        np.testing.assert_allclose(sigma.numpy(), reference, rtol=1e-9, atol=1e-12 * reference[0])


def test_jobs_must_be_positive():
    with pytest.raises(spectra.SpectraError, match="jobs"):
        list(singular_values_stream(_dense_deltas([(4, 4)]), "cpu", jobs=0))


@pytest.mark.parametrize("shape", [(300, 1100), (1100, 300), (512, 512), (513, 40), (1, 9)])
def test_lower_gram_is_the_smaller_gram_matrix(shape):
    M = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    X = M.numpy() if shape[0] <= shape[1] else M.numpy().T
    reference = X @ X.T  # (n, n)
    gram = _lower_gram(M).numpy()
    np.testing.assert_allclose(np.tril(gram), np.tril(reference), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_fast_path_keeps_float64_accuracy_over_a_long_inner_dimension():
    # σ from 1 to 1e-6 with 8192 columns: the documented bound at 1e-5·σ_1 is
    # ½·ε₆₄·1e10 ≈ 1.1e-6; a Gram summed by MKL in one pass over 8192 terms
    # was off by 2.1e-7, the chunked Gram by 4e-8.
    rng = np.random.default_rng(0)
    n, k = 256, 8192
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((k, n)))
    matrix = (U * np.logspace(0, -6, n)) @ V.T  # (n, k)
    reference = reference_sigma(matrix)
    sigma = singular_values(Dense(torch.from_numpy(matrix)), "cpu", "fast").numpy()
    above = reference >= 1e-5 * reference[0]
    assert np.max(np.abs(sigma[above] - reference[above]) / reference[above]) < 1e-7


@pytest.mark.parametrize(
    "dtypes",
    [
        (torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float32),  # tuned coarser: the base is rounded to float16 first
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.bfloat16),  # base coarser: its values are already on tuned's grid
        (torch.float64, torch.float64),
    ],
)
def test_difference_on_the_tuned_grid_with_both_norms(dtypes):
    generator = torch.Generator().manual_seed(2)
    tuned = torch.randn(1100, 70, generator=generator).to(dtypes[0])  # more rows than one strip
    base = torch.randn(1100, 70, generator=generator).to(dtypes[1])
    tuned_before, base_before = tuned.clone(), base.clone()
    delta, tuned_norm, base_norm = difference(tuned, base)
    tuned64, base64 = tuned.double().numpy(), base.double().numpy()
    coarser = torch.finfo(dtypes[0]).eps > torch.finfo(dtypes[1]).eps
    # numpy reference: the base rounded to the tuned dtype when the tuned grid is coarser
    on_grid = base.to(dtypes[0]).double().numpy() if coarser else base64
    assert delta.dtype == torch.float64
    assert np.array_equal(delta.numpy(), tuned64 - on_grid)  # exact: float64 holds both
    assert tuned_norm == pytest.approx(np.linalg.norm(tuned64), rel=1e-13)
    assert base_norm == pytest.approx(np.linalg.norm(base64), rel=1e-13)  # the base as stored
    # neither input is written into (a float64 tuned tensor used to be subtracted in place)
    assert torch.equal(tuned, tuned_before) and torch.equal(base, base_before)
    assert delta.data_ptr() != tuned.data_ptr()


def test_difference_of_an_untouched_bf16_cast_is_exactly_zero():
    """A float32 release cast to bf16 with no training: ΔW = 0, not bf16 rounding error."""
    base = torch.randn(300, 200, generator=torch.Generator().manual_seed(3))
    delta, _, _ = difference(base.to(torch.bfloat16), base)
    assert not delta.any()


def _slowly(delays: dict[int, float]):
    def compute(item: int) -> int:
        time.sleep(delays.get(item, 0.0))
        return item * item

    return compute


def test_ordered_map_keeps_input_order_when_later_items_finish_first():
    delays = {0: 0.2, 1: 0.0, 2: 0.1, 3: 0.0}
    out = list(ordered_map(_slowly(delays), range(8), jobs=3))
    assert out == [(i, i * i) for i in range(8)]


def test_ordered_map_runs_setup_in_each_worker_and_spreads_the_work():
    names: set[str] = set()
    workers: set[str] = set()

    def compute(item: int) -> int:
        workers.add(threading.current_thread().name)
        time.sleep(0.02)
        return item

    def setup() -> None:
        names.add(threading.current_thread().name)

    assert [r for _, r in ordered_map(compute, range(10), jobs=2, setup=setup)] == list(range(10))
    assert len(names) == 2 and workers <= names and len(workers) == 2


def test_ordered_map_raises_errors_where_a_loop_would():
    def compute(item: int) -> int:
        if item == 3:
            raise ArithmeticError("bad item 3")
        return item

    seen = []
    with pytest.raises(ArithmeticError, match="bad item 3"):
        for item, _ in ordered_map(compute, range(10), jobs=2):
            seen.append(item)
    assert seen == [0, 1, 2]

    def source():
        yield from range(4)
        raise OSError("disk gone")

    seen = []
    with pytest.raises(OSError, match="disk gone"):
        for item, _ in ordered_map(_slowly({0: 0.1}), source(), jobs=3):
            seen.append(item)
    assert seen == [0, 1, 2, 3]


def test_ordered_map_takes_at_most_jobs_items_ahead_and_stops_when_the_consumer_does():
    taken = []

    def source():
        for i in range(1000):
            taken.append(i)
            yield i

    for item, _ in ordered_map(_slowly({}), source(), jobs=2):
        time.sleep(0.01)  # a slow consumer: workers must wait for it, not run ahead
        assert len(taken) <= item + 1 + 2
        if item == 5:
            break
    assert not any(
        t.name.startswith("spectra-worker") and t.is_alive() for t in threading.enumerate()
    )
    assert len(taken) <= 6 + 2


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
