"""vllm bench serve's metric definitions, checked on timestamps whose answers are known."""
import pytest

from workbook.errors import ParameterError
from workbook.serve.metrics import Timing, check_slos, meets, percentile, summary


def _t(send, chunks, ok=True, prompt=10):
    return Timing(send_s=send, chunk_s=list(chunks), output_tokens=len(chunks),
                  prompt_tokens=prompt, ok=ok, error="" if ok else "HTTP 503")


def test_one_request_by_hand():
    t = _t(0.0, [0.100, 0.120, 0.150, 0.160])
    assert t.ttft_ms == pytest.approx(100)
    assert t.e2el_ms == pytest.approx(160)
    assert t.tpot_ms == pytest.approx(60 / 3)  # (E2EL - TTFT) / (tokens - 1)
    assert t.itl_ms == pytest.approx([20, 30, 10])


def test_summary_pools_itl_and_uses_vllm_field_names():
    ts = [_t(0.0, [0.1, 0.2, 0.3]), _t(1.0, [1.3, 1.35]), _t(2.0, [2.05]),
          _t(3.0, [], ok=False)]
    s = summary(ts, duration_s=4.0, slos_ms={"ttft": 150})
    assert s["completed"] == 3 and s["failed"] == 1 and s["errors"] == ["HTTP 503"]
    assert s["total_output_tokens"] == 6 and s["total_input_tokens"] == 30
    assert s["request_throughput"] == pytest.approx(3 / 4)
    assert s["output_throughput"] == pytest.approx(6 / 4)
    assert s["total_token_throughput"] == pytest.approx(36 / 4)
    assert s["mean_ttft_ms"] == pytest.approx((100 + 300 + 50) / 3)
    assert s["median_ttft_ms"] == pytest.approx(100)
    # TPOT only for requests with more than one token: 100 and 50
    assert s["mean_tpot_ms"] == pytest.approx(75)
    # ITL pooled over every gap of every request: 100, 100, 50
    assert s["mean_itl_ms"] == pytest.approx(250 / 3)
    assert s["p99_e2el_ms"] == pytest.approx(percentile([300, 350, 50], 99))
    # goodput: TTFT <= 150 ms holds for the first and third request
    assert s["request_goodput"] == pytest.approx(2 / 4)
    for key in ("mean", "median", "std", "p50", "p90", "p99"):
        for m in ("ttft", "tpot", "itl", "e2el"):
            assert f"{key}_{m}_ms" in s


def test_percentile_interpolates_like_numpy():
    np = pytest.importorskip("numpy")
    v = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    for p in (50, 90, 99):
        assert percentile(v, p) == pytest.approx(float(np.percentile(v, p)))
    assert percentile([], 50) is None


def test_a_one_token_request_has_no_tpot_and_meets_a_tpot_slo():
    t = _t(0.0, [0.2])
    assert t.tpot_ms is None and t.itl_ms == []
    assert meets(t, {"tpot": 1}) and not meets(t, {"ttft": 100})
    assert not meets(_t(0.0, [], ok=False), {})


@pytest.mark.parametrize("slos,sentence", [
    ({"latency": 100}, "keys among ttft, tpot, e2el"),
    ({"ttft": 0}, "a positive number of ms per key"),
    ({"ttft": "fast"}, "a positive number of ms per key"),
])
def test_bad_slos_name_the_parameter(slos, sentence):
    with pytest.raises(ParameterError, match=sentence):
        check_slos(slos)


def test_with_first_and_last_arrival_only_itl_is_its_pooled_mean():
    """What GuideLLM keeps: the pooled mean of the gaps is exact, their percentiles unknown."""
    full = [_t(0.0, [0.1, 0.2, 0.3]), _t(1.0, [1.3, 1.35])]
    ends = [Timing(t.send_s, [t.chunk_s[0], t.chunk_s[-1]], t.output_tokens, t.prompt_tokens,
                   all_chunks=False) for t in full]
    a, b = summary(full, 2.0), summary(ends, 2.0)
    assert b["mean_itl_ms"] == pytest.approx(a["mean_itl_ms"])
    assert b["p99_itl_ms"] is None and "pooled mean only" in b["itl_note"]
    for k in ("mean_ttft_ms", "mean_tpot_ms", "p99_e2el_ms"):
        assert b[k] == pytest.approx(a[k])
