"""Target resolution (workbook.targets) on a machine with no CUDA GPU (these tests skip where torch sees one)."""
import pytest
import torch

from workbook import targets as device
from workbook.errors import ParameterError, WorkbookError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(),
                             reason="expects a machine where torch sees no CUDA GPU")


DEVICE = dict(param="device", choices=("auto", "cpu", "cuda"))


def test_cpu_requested():
    t = device.resolve("cpu", **DEVICE)
    assert t.name == "cpu" and t.reason == "requested"
    assert t.device_name == device.cpu_name() and t.device_name
    assert t.torch() == torch.device("cpu") and t.devices >= 1 and t.unit == "CPU cores"


@no_cuda
def test_auto_picks_cpu_and_says_why():
    t = device.resolve("auto", **DEVICE)
    assert t.name == "cpu"
    assert "no CUDA GPU" in t.reason and t.reason.startswith("auto")
    assert device.cuda_available() is False


@no_cuda
def test_cuda_requested_without_gpu_raises():
    with pytest.raises(ParameterError) as ei:
        device.resolve("cuda", **DEVICE)
    msg = str(ei.value)
    assert "device='cuda'" in msg and "no CUDA GPU" in msg and "cpu here" in msg
    assert isinstance(ei.value, WorkbookError) and isinstance(ei.value, ValueError)


@no_cuda
def test_cuda_error_names_the_given_parameter():
    with pytest.raises(ParameterError, match="ref_device='cuda'"):
        device.resolve("cuda", param="ref_device", choices=("auto", "cpu", "cuda"))


@pytest.mark.parametrize("bad", ["tpu", "CPU", "", "cuda:0"])
def test_unknown_device_lists_the_allowed(bad):
    with pytest.raises(ParameterError) as ei:
        device.resolve(bad, **DEVICE)
    msg = str(ei.value)
    assert f"device={bad!r}" in msg
    assert "one of auto, cpu, cuda" in msg


def test_synchronize_cpu_is_a_no_op():
    assert device.synchronize("cpu") is None


# --- resolve(): the one resolver of auto/cpu/cuda/neuron ------------------------------------------


def _probe(ok, why):
    return lambda: (ok, why)


@no_cuda
def test_auto_on_a_cpu_machine_whose_neuron_probe_says_no():
    t = device.resolve("auto", neuron=_probe(False, "no NeuronCores here"))
    assert t.name == "cpu" and t.unit == "CPU cores" and t.devices >= 1
    assert t.reason.startswith("auto: the CPU, since neuron: no NeuronCores here; cuda: torch sees "
                               "no CUDA")
    assert t.torch() == torch.device("cpu")
    # no probe: no neuron
    assert device.resolve("auto").reason.startswith("auto: the CPU, since cuda: ")


def test_auto_takes_neuron_where_its_probe_says_yes(monkeypatch):
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "0-1")
    t = device.resolve("auto", neuron=_probe(True, "torch-neuronx and 2 NeuronCores"))
    assert (t.name, t.devices, t.unit) == ("neuron", 2, "NeuronCores")
    assert t.reason == "auto: torch-neuronx and 2 NeuronCores" and t.torch() == torch.device("cpu")
    assert t.describe()["devices"] == "2 NeuronCores"


@no_cuda
def test_neuron_asked_for_by_name_that_cannot_run_is_one_sentence():
    with pytest.raises(ParameterError) as ei:
        device.resolve("neuron", neuron=_probe(False, "torch-neuronx is not installed"))
    assert str(ei.value) == ("Parameter backend='neuron' is not allowed: cpu here, since neuron "
                             "cannot run: torch-neuronx is not installed.")
    with pytest.raises(ParameterError, match=r"^Parameter target='cuda' is not allowed: cpu here, "
                                             r"since cuda cannot run: torch sees no CUDA GPU"):
        device.resolve("cuda", param="target")


@pytest.mark.parametrize("bad", ["tpu", "CPU", "", "neuron:0"])
def test_an_unknown_target_lists_the_allowed(bad):
    with pytest.raises(ParameterError) as ei:
        device.resolve(bad, neuron=_probe(True, "yes"))
    assert str(ei.value) == (f"Parameter backend={bad!r} is not allowed: one of auto, cpu, cuda, "
                             "neuron.")


def test_neuron_without_a_probe_is_not_a_choice():
    with pytest.raises(ParameterError) as ei:
        device.resolve("neuron")
    assert str(ei.value) == "Parameter backend='neuron' is not allowed: one of auto, cpu, cuda."
    with pytest.raises(ParameterError, match="one of auto, cpu, cuda[.]$"):
        device.resolve("neuron", choices=("auto", "cpu", "cuda"), neuron=_probe(True, "yes"))
