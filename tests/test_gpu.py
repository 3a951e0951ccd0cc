"""Tests that need a CUDA GPU (marked ``gpu``; skipped elsewhere): the interpolation implementations and the
timing helpers on the device, where kernels and dtypes behave differently from the CPU."""
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
