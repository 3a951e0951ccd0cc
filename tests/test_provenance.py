"""Provenance: the keys a run records, hardware labels, git state, GPU and Neuron detection."""
import importlib
import json
import os
import subprocess
import sys

import pytest

from workbook import provenance


@pytest.fixture
def no_outer_git(tmp_path, monkeypatch):
    """Keep git from finding a repository above tmp_path or one named by the environment."""
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))


def test_collect_has_everything_and_is_json():
    info = provenance.collect()
    keys = {"collected_at", "python", "platform", "git", "packages", "torch", "hardware"}
    assert keys <= set(info)
    assert json.loads(json.dumps(info)) == info
    assert info["python"] == sys.version.split()[0]
    assert set(info["packages"]) == set(provenance.PACKAGES)
    import workbook

    assert info["packages"]["workbook"] == workbook.__version__
    import torch

    assert info["torch"]["version"] == torch.__version__
    hw = info["hardware"]
    assert {"cpu", "ram_gb", "gpus", "neuron", "hostname"} <= set(hw)
    assert hw["cpu"]["cores_logical"] >= 1
    assert 1 <= hw["cpu"]["cores_usable"] <= hw["cpu"]["cores_logical"]
    assert hw["ram_gb"] > 0
    assert isinstance(hw["gpus"], list)
    assert {"commit", "dirty", "branch"} == set(info["git"])


def test_no_gpu_and_no_neuron_here():
    import shutil

    import torch

    if torch.cuda.is_available() or shutil.which("nvidia-smi"):
        pytest.skip("this machine has a GPU or nvidia-smi")
    assert provenance.gpu_info() == []
    neuron = provenance.neuron_info()
    assert neuron["devices"] == 0
    assert neuron["torch_neuronx"] is None or neuron["torch_neuronx"].startswith("unusable")


def test_gpu_info_parses_nvidia_smi(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559, 550.54.15, GPU-aaaa'\n"
                    "echo 'NVIDIA H100 80GB HBM3, 81559, 550.54.15, GPU-bbbb'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    gpus = provenance.gpu_info()
    assert gpus == [{"name": "NVIDIA H100 80GB HBM3", "memory_gb": 79.6, "driver": "550.54.15",
                     "uuid": u} for u in ("GPU-aaaa", "GPU-bbbb")]
    assert provenance.hardware_label({"gpus": gpus}) == "2× NVIDIA H100 80GB HBM3"
    hw = {"gpus": gpus, "hostname": "vm", "boot_id": "b1"}
    assert provenance.machine_id(hw) == "gpu:GPU-aaaa,GPU-bbbb"


def test_machine_id_tells_machines_apart_not_kinds():
    """Lent GPU machines share a hostname: GPU UUIDs tell them apart; else host and boot id."""
    gpu = {"name": "NVIDIA H200", "memory_gb": 139.8, "driver": "580", "uuid": "GPU-1"}
    assert provenance.machine_id({"gpus": [gpu], "hostname": "vm"}) != \
        provenance.machine_id({"gpus": [{**gpu, "uuid": "GPU-2"}], "hostname": "vm"})
    assert provenance.machine_id({"gpus": [], "hostname": "ci", "boot_id": "b1"}) == "host:ci:b1"
    assert provenance.machine_id({"gpus": [], "hostname": "ci", "boot_id": "b2"}) != "host:ci:b1"
    # an old record
    assert provenance.machine_id({"gpus": [{**gpu, "uuid": None}], "hostname": "vm"}) is None
    assert provenance.machine_id({"gpus": [], "hostname": "ci"}) is None
    here = provenance.hardware()
    # stable within a boot
    assert provenance.machine_id(here) == provenance.machine_id(provenance.hardware())


@pytest.fixture
def fake_neuronx(tmp_path, monkeypatch):
    """Write a ``torch_neuronx`` module with the given body on sys.path; forget it afterwards."""
    def make(body: str):
        (tmp_path / "torch_neuronx.py").write_text(body)
        importlib.invalidate_caches()

    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("torch_neuronx", None)
    yield make
    sys.modules.pop("torch_neuronx", None)
    importlib.invalidate_caches()


def test_neuron_placeholder_package_is_unusable(fake_neuronx):
    fake_neuronx("raise ImportError('This is a placeholder; install from the Neuron "
                 "repository\\nsecond line')")
    sdk = provenance.neuron_info()["torch_neuronx"]
    assert sdk == "unusable (This is a placeholder; install from the Neuron repository)"


def test_neuron_import_crash_is_unusable(fake_neuronx):
    fake_neuronx("raise RuntimeError('no driver')")
    assert provenance.neuron_info()["torch_neuronx"] == "unusable (RuntimeError)"


def test_neuron_sdk_version(fake_neuronx):
    fake_neuronx("__version__ = '2.5.0'")
    assert provenance.neuron_info()["torch_neuronx"] == "2.5.0"


def test_hardware_label_gpu_and_cpu():
    gpu = {"gpus": [{"name": "NVIDIA H200", "memory_gb": 139.8}],
           "cpu": {"model": "Xeon", "cores_usable": 16}}
    assert provenance.hardware_label(gpu) == "NVIDIA H200"
    cpu = {"gpus": [], "cpu": {"model": "AMD EPYC", "cores_usable": 2}}
    assert provenance.hardware_label(cpu) == "AMD EPYC (2 cores)"
    trn = {"gpus": [], "cpu": {"model": "AMD EPYC", "cores_usable": 8},
           "neuron": {"devices": 16, "instance_family": "trn2"}}
    assert provenance.hardware_label(trn) == "trn2 (16 Neuron devices)"
    here = provenance.hardware()
    if not here["gpus"]:
        label = provenance.hardware_label(here)
        assert label.startswith(here["cpu"]["model"])
        assert f"({here['cpu']['cores_usable']} cores)" in label


def test_git_info_outside_a_repository(wb_root, no_outer_git, monkeypatch):
    monkeypatch.delenv("WORKBOOK_GIT_COMMIT", raising=False)
    assert provenance.git_info() == {"commit": None, "dirty": None, "branch": None, "source": None}
    # a copy without .git (a remote GPU machine) can be told its commit by the caller
    monkeypatch.setenv("WORKBOOK_GIT_COMMIT", "abc123")
    assert provenance.git_info() == {"commit": "abc123", "dirty": False, "branch": None,
                                     "source": "WORKBOOK_GIT_COMMIT"}


def test_git_commit_from_the_environment_wins_over_a_stale_checkout(monkeypatch):
    """A copied tree may carry an old .git; the commit its caller names is the one recorded."""
    monkeypatch.setenv("WORKBOOK_GIT_COMMIT", "def456")
    monkeypatch.setenv("WORKBOOK_GIT_DIRTY", "1")
    assert provenance.git_info() == {"commit": "def456", "dirty": True, "branch": None,
                                     "source": "WORKBOOK_GIT_COMMIT"}


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c",
                    "commit.gpgsign=false", *args], cwd=repo, check=True, capture_output=True)


def test_git_info_commit_and_dirty(tmp_path, monkeypatch, no_outer_git):
    monkeypatch.delenv("WORKBOOK_GIT_COMMIT", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setenv("WORKBOOK_ROOT", str(repo))
    _git(repo, "init", "-q", "-b", "trunk")
    assert provenance.git_info()["commit"] is None  # no commit yet
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "first")
    info = provenance.git_info()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True).stdout.strip()
    assert info == {"commit": head, "dirty": False, "branch": "trunk"}
    assert len(info["commit"]) == 40 and all(c in "0123456789abcdef" for c in info["commit"])

    (repo / "untracked.txt").write_text("not tracked\n")
    assert provenance.git_info()["dirty"] is False  # untracked files do not make the tree dirty
    (repo / "a.txt").write_text("two\n")
    assert provenance.git_info()["dirty"] is True
    (repo / "a.txt").write_text("one\n")
    assert provenance.git_info()["dirty"] is False


def test_now_iso_has_timezone():
    from datetime import datetime

    t = datetime.fromisoformat(provenance.now_iso())
    assert t.tzinfo is not None


def test_a_neuron_machine_records_its_instance_family_and_where_it_was_read(neuron_tree,
                                                                          monkeypatch):
    from workbook.backends import neuron

    monkeypatch.setenv(neuron.SYSFS_ENV, str(neuron_tree))
    arch = neuron_tree / "neuron0" / "info" / "architecture"
    arch.mkdir(parents=True)
    (arch / "instance_type").write_text("Trn2\n")
    info = provenance.neuron_info()
    assert info["instance_family"] == "trn2"
    assert info["instance_family_source"] == "sysfs neuron0/info/architecture/instance_type = Trn2"
    monkeypatch.setenv(neuron.SYSFS_ENV, str(neuron_tree / "absent"))
    assert "instance_family" not in provenance.neuron_info()  # not a Neuron machine: not asked
