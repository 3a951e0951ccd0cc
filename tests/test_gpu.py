"""Tests that need a CUDA GPU (marked ``gpu``; skipped elsewhere): the interpolation implementations
and the timing helpers on the device, where kernels and dtypes behave differently from the CPU."""
import pytest
import torch

from workbook import interp, measure, metrics

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", list(interp.IMPLEMENTATIONS))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_interp_on_cuda_matches_cpu(name, dtype, tol):
    tab = interp.random_table(16, 64, seed=1, std=1.0)
    ref = interp.interpolate(name, tab.double(), (27, 19))
    out = interp.interpolate(name, tab.to("cuda", dtype), (27, 19))
    assert out.device.type == "cuda" and out.dtype == dtype and out.shape == ref.shape
    m = metrics.compare(out.float().cpu(), ref)
    assert m["max_abs_diff"] < tol * 4 and m["cosine_min"] > 0.999


def test_cuda_event_timing_is_positive_and_ordered():
    x = torch.randn(2048, 2048, device="cuda")
    small = measure.time_fn(lambda: x[:64] @ x[:, :64], device="cuda", warmup=3, iters=10)
    big = measure.time_fn(lambda: x @ x, device="cuda", warmup=3, iters=10)
    assert 0 < small.median_ms < big.median_ms
    assert big.p10_ms <= big.median_ms <= big.p90_ms


def test_time_queued_separates_the_hosts_queueing_from_the_devices_work():
    """A call that spends 3 ms on the host and microseconds on the GPU: plain events time the host's
    3 ms; with the host queued ahead the device time is the kernel's alone, and the 3 ms show as
    queueing time."""
    import time

    x = torch.randn(256, 256, device="cuda")

    def slow_host():
        time.sleep(0.003)
        return x @ x

    plain = measure.time_fn(slow_host, device="cuda", warmup=2, iters=10)
    queued = measure.time_queued(slow_host, warmup=2, iters=10)
    assert plain.median_ms >= 3.0
    assert queued.host.median_ms >= 3.0
    assert queued.device.median_ms < 0.5 and queued.host_bound_share == 0.0


def test_time_queued_lengthens_a_head_start_that_proves_too_short():
    """Warm-up is quick, then queueing gets slow: the first timed call is late (counted), later ones
    are not."""
    import time

    x = torch.randn(256, 256, device="cuda")
    calls = []

    def slower_after_warmup():
        calls.append(1)
        if len(calls) > 1:
            time.sleep(0.004)
        return x @ x

    queued = measure.time_queued(slower_after_warmup, warmup=1, iters=6)
    assert 0 < queued.host_bound_share <= 2 / 6
    assert queued.device.min_ms < 0.5  # the calls after the lengthened spins time the device alone
