"""Timing helpers: percentiles, summaries, call counts and order (no timing thresholds)."""
import random

import numpy as np
import pytest

from workbook import measure
from workbook.measure import Timing


@pytest.mark.parametrize("n", [1, 2, 5, 17, 100])
def test_percentile_matches_numpy_linear(n):
    rng = random.Random(n)
    values = [rng.uniform(-10, 10) for _ in range(n)]
    for q in (0, 1, 10, 25, 50, 73.5, 90, 99, 100):
        expected = np.percentile(values, q, method="linear")
        assert measure.percentile(values, q) == pytest.approx(expected, abs=1e-12)


def test_percentile_does_not_reorder_input_and_rejects_empty():
    values = [3.0, 1.0, 2.0]
    assert measure.percentile(values, 50) == 2.0
    assert values == [3.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="empty"):
        measure.percentile([], 50)


def test_summarize_fields():
    samples = [5.0, 1.0, 4.0, 2.0, 3.0]
    t = measure.summarize(samples, warmup=7)
    assert t == Timing(median_ms=3.0, p10_ms=pytest.approx(1.4), p90_ms=pytest.approx(4.6),
                       p99_ms=pytest.approx(4.96), min_ms=1.0, iters=5, warmup=7)
    assert t.as_dict("x_") == {"x_median_ms": 3.0, "x_p10_ms": t.p10_ms, "x_p90_ms": t.p90_ms,
                               "x_p99_ms": t.p99_ms, "x_min_ms": 1.0, "x_iters": 5, "x_warmup": 7}
    assert set(t.as_dict()) == {"median_ms", "p10_ms", "p90_ms", "p99_ms", "min_ms", "iters",
                                "warmup"}


def test_summarize_even_count_median_is_mean_of_middle_two():
    assert measure.summarize([1.0, 2.0, 3.0, 10.0], warmup=0).median_ms == 2.5


def test_time_fn_calls_warmup_plus_iters():
    calls = []
    t = measure.time_fn(lambda: calls.append(1), warmup=4, iters=9)
    assert len(calls) == 13
    assert t.iters == 9 and t.warmup == 4
    assert 0 <= t.min_ms <= t.p10_ms <= t.median_ms <= t.p90_ms


def test_time_fn_zero_warmup_and_bad_iters():
    calls = []
    assert measure.time_fn(lambda: calls.append(1), warmup=0, iters=1).iters == 1
    assert len(calls) == 1
    for bad in (0, -1):
        with pytest.raises(ValueError, match="iters"):
            measure.time_fn(lambda: calls.append(1), iters=bad)
    assert len(calls) == 1  # raised before any call


def test_time_interleaved_counts_and_round_robin_order():
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    res = measure.time_interleaved(fns, warmup=2, iters=5)
    assert list(res) == ["a", "b", "c"]
    assert all(t.iters == 5 and t.warmup == 2 for t in res.values())
    assert len(order) == 3 * (2 + 5)
    assert order == ["a", "b", "c"] * 7  # each round calls every fn once, in the dict's order
    for t in res.values():
        assert t.min_ms <= t.p10_ms <= t.median_ms <= t.p90_ms


def test_time_interleaved_rejects_zero_iters():
    with pytest.raises(ValueError):
        measure.time_interleaved({"a": lambda: None}, iters=0)


# before touching a GPU; its timing is tested in test_gpu.py
def test_time_queued_rejects_zero_iters():
    with pytest.raises(ValueError):
        measure.time_queued(lambda: None, iters=0)


def test_time_once_returns_ms_and_result():
    calls = []

    def fn():
        calls.append(1)
        return {"answer": 42}

    ms, out = measure.time_once(fn)
    assert out == {"answer": 42}
    assert len(calls) == 1
    assert isinstance(ms, float) and ms >= 0


def test_spin_returns_call_count():
    calls = []
    n = measure.spin(lambda: calls.append(1), seconds=0.05)
    assert n >= 1 and n == len(calls)


def test_spin_with_zero_seconds_makes_no_calls():
    calls = []
    assert measure.spin(lambda: calls.append(1), seconds=0) == 0
    assert calls == []
