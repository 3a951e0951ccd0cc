"""workbook.telemetry: clock, power and energy of a measured window, through a stand-in NVML.

This machine has no NVIDIA driver, so the real pynvml cannot open a device here (one test checks
that this is reported as such). ``StandInNVML`` (tests/conftest.py, through the ``standin_nvml``
fixture) is a TEST STAND-IN for the few pynvml calls the module makes: it answers from scripted
sequences, so the summary's arithmetic and the fallbacks are checked against known values.
"""
from __future__ import annotations

import sys
import time

import pytest

from workbook import telemetry
from workbook.telemetry import Telemetry


def _window(nvml, seconds=0.15, **kw):
    tm = Telemetry(0, period_s=0.005, nvml=nvml, **kw)
    with tm:
        time.sleep(seconds)
    return tm


def test_reason_names_decode_the_nvml_bits():
    assert telemetry.reason_names(0) == []
    assert telemetry.reason_names(0x4) == ["sw power cap"]
    assert telemetry.reason_names(0x1 | 0x4 | 0x40) == ["idle", "sw power cap",
                                                        "hw thermal slowdown"]
    # a bit this module does not know
    assert telemetry.reason_names(0x4 | 0x10000) == ["sw power cap", "0x10000"]


def test_summary_gives_clock_power_energy_per_step_and_the_power_cap_share(standin_nvml):
    # the first sample is at full clock, every later one at the power cap with a lower clock
    nvml = standin_nvml(clocks=(1980, 1600), power_mw=(300_000, 690_000), reasons=(0, 0x4),
                        temps_c=(40, 60))
    tm = _window(nvml)
    s = tm.summary(steps=4)
    n = s["telemetry_samples"]
    assert n >= 5
    assert s["sm_clock_mhz"] == pytest.approx((1980 + 1600 * (n - 1)) / n)
    assert s["sm_clock_min_mhz"] == 1600
    assert s["power_w"] == pytest.approx((300 + 690 * (n - 1)) / n)
    assert s["power_max_w"] == 690
    # from the counter: 2.4e6 mJ over 4 steps
    assert s["energy_j_per_step"] == pytest.approx(2400 / 4)
    assert s["energy_source"] == "NVML energy counter"
    assert s["power_capped_share"] == pytest.approx((n - 1) / n)
    assert s["clock_reasons"] == "sw power cap"
    assert s["power_limit_w"] == 700
    # the chip warmed from 40 to 60 C after the first sample: first, mean and highest temperature
    assert s["gpu_temp_start_c"] == 40 and s["gpu_temp_max_c"] == 60
    assert s["gpu_temp_c"] == pytest.approx((40 + 60 * (n - 1)) / n)
    assert nvml.shutdowns == 1


def test_a_gpu_without_a_temperature_reading_leaves_the_temperature_out(standin_nvml):
    s = _window(standin_nvml(temps_c=()), seconds=0.05).summary()
    assert s["telemetry_samples"] >= 1 and s["power_limit_w"] == 700  # everything else is there
    assert not any(k.startswith("gpu_temp") for k in s)


def test_energy_falls_back_to_power_samples_and_old_drivers_use_the_throttle_name(standin_nvml):
    nvml = standin_nvml(power_mw=(500_000,), reasons=(0x1,), no_energy=True, old_reasons=True)
    tm = _window(nvml, seconds=0.1)
    s = tm.summary(steps=2)
    assert s["energy_source"] == "power samples x time"
    assert s["energy_j_per_step"] == pytest.approx(500 * tm.seconds / 2)
    assert s["clock_reasons"] == "idle" and s["power_capped_share"] == 0


def test_no_driver_gives_no_summary_and_says_why(standin_nvml):
    tm = _window(standin_nvml(fail_init=True), seconds=0.0)
    assert tm.summary() is None
    assert tm.unavailable == "NVML could not be opened (Driver Not Loaded)"


def test_without_the_package_the_reason_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    tm = Telemetry(0)
    with tm:
        pass
    assert tm.summary() is None
    assert tm.unavailable == "the nvidia-ml-py package (pynvml) is not installed"


def test_the_real_nvml_on_a_machine_without_a_driver_is_reported():
    pytest.importorskip("pynvml")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    tm = _window(None, seconds=0.0)
    assert tm.summary() is None and tm.unavailable.startswith("NVML could not be opened")


def test_cuda_visible_devices_maps_the_cuda_index_to_nvml_numbering(monkeypatch, standin_nvml):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    nvml = standin_nvml()
    Telemetry(1, nvml=nvml)
    Telemetry(0, nvml=nvml)
    # UUIDs: NVML's own order is the best guess left
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5f3c")
    Telemetry(0, nvml=nvml)
    assert nvml.opened == [1, 3, 0]


def test_windows_of_one_telemetry_add_up_and_each_opens_and_closes_nvml(standin_nvml):
    """An interleaved benchmark enters one Telemetry per variant once a turn: samples, seconds and
    the energy counter's differences add up over its windows, and what ran between them counts for
    nothing."""
    nvml = standin_nvml(power_mw=(600_000,), energy_mj=(0, 1_000_000, 5_000_000, 5_500_000),
                        temps_c=(50, 70))
    tm = Telemetry(0, period_s=0.005, nvml=nvml)
    for _ in range(2):
        with tm:
            time.sleep(0.05)
        n_after = len(tm.samples)
        time.sleep(0.03)  # another variant's turn: no sample is taken
        assert len(tm.samples) == n_after
    s = tm.summary(steps=3)
    # 0 -> 1e6 mJ, then 5e6 -> 5.5e6 mJ
    assert s["energy_j_per_step"] == pytest.approx((1000 + 500) / 3)
    assert s["energy_source"] == "NVML energy counter"
    # the two windows, not the gaps between them (with slack for a busy host)
    assert 0.1 <= tm.seconds < 0.13 + 0.2
    # opened at construction, then again for the second window
    assert nvml.shutdowns == 2 and nvml.opened == [0, 0]
    assert s["gpu_temp_start_c"] == 50 and s["gpu_temp_max_c"] == 70


def test_a_window_without_the_energy_counter_makes_the_whole_energy_come_from_samples(standin_nvml):
    nvml = standin_nvml(power_mw=(400_000,), energy_mj=(0, 1_000_000))
    tm = Telemetry(0, period_s=0.005, nvml=nvml)
    with tm:
        time.sleep(0.02)
    nvml.no_energy = True  # the counter stopped answering: one window's difference is missing
    with tm:
        time.sleep(0.02)
    s = tm.summary(steps=2)
    assert s["energy_source"] == "power samples x time"
    assert s["energy_j_per_step"] == pytest.approx(400 * tm.seconds / 2)



def test_an_energy_counter_that_did_not_advance_is_not_read_as_zero_joules(standin_nvml):
    """The driver updates the counter less often than a tiny model's window lasts (seen on an H100
    with the tiny stack: 0 J a step); such a window gives no counter energy, and the whole comes
    from the samples."""
    nvml = standin_nvml(power_mw=(300_000,), energy_mj=(7_000, 7_000))
    tm = _window(nvml, seconds=0.02)
    s = tm.summary(steps=4)
    assert s["energy_source"] == "power samples x time"
    assert s["energy_j_per_step"] == pytest.approx(300 * tm.seconds / 4)
    assert s["energy_j_per_step"] > 0

@pytest.mark.gpu
def test_the_real_nvml_reads_a_busy_gpu():
    """On a GPU: clock, power, temperature and the energy counter through the real pynvml, over two
    windows of bf16 matrix products, agree with each other and with what a busy data-centre GPU can
    read."""
    import torch

    pytest.importorskip("pynvml")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    tm = Telemetry(torch.cuda.current_device())
    for _ in range(2):
        with tm:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.6:
                for _ in range(20):
                    a = (a @ a).clamp_(-1, 1)
                torch.cuda.synchronize()
    s = tm.summary(steps=2)
    assert s is not None, tm.unavailable
    assert s["telemetry_samples"] >= 20 and tm.seconds >= 1.2
    assert 200 <= s["sm_clock_min_mhz"] <= s["sm_clock_mhz"] <= 3000
    assert 0 < s["power_w"] <= s["power_max_w"] <= 1.3 * s["power_limit_w"]
    assert 10 <= s["gpu_temp_start_c"] <= s["gpu_temp_max_c"] <= 110
    assert s["energy_source"] == "NVML energy counter"
    # the counter's mean power over the windows: a busy GPU's, under its limit. (Not compared with
    # the samples' mean: NVML's power reading trails, an average over about a second, so it lags a
    # window this short.)
    assert 100 <= s["energy_j_per_step"] * 2 / tm.seconds <= 1.3 * s["power_limit_w"]
