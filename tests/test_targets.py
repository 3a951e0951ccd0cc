"""Device resolution on a machine with no CUDA GPU (these tests skip where torch sees one)."""
import pytest
import torch

from workbook import targets as device
from workbook.errors import ParameterError, WorkbookError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="expects a machine where torch sees no CUDA GPU")


def test_cpu_requested():
    choice = device.resolve_device("cpu")
    assert choice.device == "cpu" and choice.reason == "requested"
    assert choice.name == device.cpu_name() and choice.name
    assert choice.torch() == torch.device("cpu")


@no_cuda
def test_auto_picks_cpu_and_says_why():
    choice = device.resolve_device("auto")
    assert choice.device == "cpu"
    assert "no CUDA GPU" in choice.reason and choice.reason.startswith("auto")
    assert device.cuda_available() is False


@no_cuda
def test_cuda_requested_without_gpu_raises():
    with pytest.raises(ParameterError) as ei:
        device.resolve_device("cuda")
    msg = str(ei.value)
    assert "device='cuda'" in msg and "no CUDA GPU" in msg
    assert isinstance(ei.value, WorkbookError) and isinstance(ei.value, ValueError)


@no_cuda
def test_cuda_error_names_the_given_parameter():
    with pytest.raises(ParameterError, match="ref_device='cuda'"):
        device.resolve_device("cuda", param="ref_device")


@pytest.mark.parametrize("bad", ["tpu", "CPU", "", "cuda:0"])
def test_unknown_device_lists_the_allowed(bad):
    with pytest.raises(ParameterError) as ei:
        device.resolve_device(bad)
    msg = str(ei.value)
    assert f"device={bad!r}" in msg
    assert "one of auto, cpu, cuda" in msg


def test_synchronize_cpu_is_a_no_op():
    assert device.synchronize("cpu") is None
