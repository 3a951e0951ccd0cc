"""Shared fixtures: a throw-away workbook root with a tiny notebook, so runner tests touch no real outputs.

Tests that run anywhere are unmarked; tests that need a CUDA GPU are marked ``gpu`` and skip here.
"""
from __future__ import annotations

import os
import tempfile

import torch

# The Triton kernels run under the interpreter on a machine without CUDA; Triton reads this at import, so it
# must be set before any test module imports workbook.kernels (conftest is imported first).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import nbformat  # noqa: E402
import pytest  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Runs made by tests (nbmake's notebook runs included: the kernels inherit this) never land in outputs/.
if "WORKBOOK_OUTPUTS" not in os.environ:
    os.environ["WORKBOOK_OUTPUTS"] = tempfile.mkdtemp(prefix="workbook-test-outputs-")


def assert_imports_without(modules: list[str], heavy: set[str]) -> None:
    """Importing ``modules`` in a fresh interpreter (without the stand-ins' PYTHONPATH) loads none of
    ``heavy``: what lets the CLI and the runner read them without starting torch or an SDK."""
    import subprocess
    import sys

    code = (f"import sys, {', '.join(modules)}; heavy = {sorted(heavy)!r}; "
            "assert not set(heavy) & set(sys.modules), sorted(sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def make_notebook(path, params_src: str, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell(params_src)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test notebook"), p] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))


SMOKE_PARAMS = "n: int = 3  # how many\nfail: bool = False  # raise on purpose\nsizes: list = [1, 2]  # sizes\nlabel: str = 'a'  # a label\npause: float = 0.0  # seconds before each group of table g (resume tests)"
SMOKE_CELLS = [
    "from workbook import record, plots\nfrom workbook.errors import bad_param\nplots.setup()\n"
    "if n < 0: raise bad_param('n', n, 'a count of at least 0')\n"
    "rec = record.start('smoke', dict(n=n, fail=fail, sizes=sizes, label=label, pause=pause))",
    "rec.add('t', {'label': label, 'n': n, 'x_ms': n * 1.5})\nrec.headline(x_ms=n * 1.5)\nif fail: rec.fallback('made up fallback')",
    "import os, time\nfor s in sizes:\n    if rec.done_group('g', size=s) is None:\n        time.sleep(pause)\n"
    "        rec.add_group('g', [{'size': s, 'pid': os.getpid()}], size=s)",
    "if fail: raise RuntimeError('planned failure')",
    "import plotly.graph_objects as go\ngo.Figure(go.Scatter(x=[1, 2], y=[n, 2 * n]))",
    "rec.finish()",
]


@pytest.fixture
def wb_root(tmp_path, monkeypatch):
    root = tmp_path / "wb"
    (root / "notebooks").mkdir(parents=True)
    (root / "params").mkdir()
    make_notebook(root / "notebooks" / "smoke.ipynb", SMOKE_PARAMS, SMOKE_CELLS)
    (root / "params" / "gpu.yaml").write_text("smoke:\n  n: 7\n  label: gpu\nother:\n  x: 1\n")
    monkeypatch.setenv("WORKBOOK_ROOT", str(root))
    monkeypatch.setenv("WORKBOOK_OUTPUTS", str(root / "outputs"))
    return root


# Modules (and notebooks) that take a minute or more, longest first (seconds on the 2-core machine, two
# workers): xdist hands modules out in collection order (--no-loadscope-reorder; by default it puts the
# modules with the most tests first, which left a two-minute notebook running alone at the end).
LONG_FIRST = ["test_llm_launch.py", "export_search.ipynb", "test_report_serving.py", "test_runner.py",
              "siglip_neuron.ipynb", "test_notebooks.py", "test_sweep_ray.py", "test_report_llm.py",
              "test_sweep.py", "test_serve.py", "test_report_content.py", "pos_interp.ipynb",
              "test_kernels.py", "test_adhoc.py", "mistral_tp.ipynb", "test_export_search.py",
              "triton_precision.ipynb", "test_llm_neuron_export.py", "test_models_siglip2.py"]


def pytest_collection_modifyitems(config, items):
    """Long modules first (:data:`LONG_FIRST`); tests marked ``gpu`` need a CUDA GPU: here they are
    skipped, saying so."""
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture
def neuron_tree(tmp_path):
    """A fake sysfs ``neuron_device`` tree: 2 devices x 2 NeuronCores (folders only; tests add files)."""
    root = tmp_path / "neuron_device"
    for d in (0, 1):
        for c in (0, 1):
            (root / f"neuron{d}" / f"neuron_core{c}").mkdir(parents=True)
    return root


class StandInNVML:
    """TEST STAND-IN for pynvml: every read returns the next scripted value (the last one repeats)."""

    class NVMLError(Exception):
        pass

    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, clocks=(1980,), power_mw=(120_000,), reasons=(0,), energy_mj=(1000, 1000 + 2_400_000),
                 limit_mw=700_000, fail_init=False, no_energy=False, old_reasons=False, temps_c=(45,)):
        self.script = {"clock": list(clocks), "power": list(power_mw), "reasons": list(reasons),
                       "energy": list(energy_mj), "temp": list(temps_c) if temps_c else []}
        self.limit_mw, self.fail_init, self.no_energy = limit_mw, fail_init, no_energy
        self.old_reasons = old_reasons
        self.opened, self.shutdowns = [], 0

    def _next(self, key):
        seq = self.script[key]
        return seq.pop(0) if len(seq) > 1 else seq[0]

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, i):
        self.opened.append(i)
        return ("gpu", i)

    def nvmlDeviceGetClockInfo(self, h, kind):
        assert kind == self.NVML_CLOCK_SM
        return self._next("clock")

    def nvmlDeviceGetPowerUsage(self, h):
        return self._next("power")

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        if not self.script["temp"]:
            raise self.NVMLError("Not Supported")  # temps_c=() or None: a GPU without a temperature sensor
        return self._next("temp")

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        if self.old_reasons:
            raise self.NVMLError("Function Not Found")  # an older driver: only the "throttle" name
        return self._next("reasons")

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):
        return self._next("reasons")

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return self.limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if self.no_energy:
            raise self.NVMLError("Not Supported")
        return self._next("energy")


@pytest.fixture
def standin_nvml():
    """The TEST STAND-IN for pynvml (class; build one with the scripted readings a test needs)."""
    return StandInNVML
