"""The Neuron instance family, from a fake sysfs tree or a fake neuron-ls: what decides between
TorchNeuron's compile and the XLA trace."""
import os
import stat

import pytest
from workbook.backends import neuron_family


@pytest.mark.parametrize("text,family", [
    ("Trn2", "trn2"), ("trn2.48xlarge", "trn2"), ("trn2u.48xlarge", "trn2"), ("Trainium2", "trn2"),
    ("Inferentia2", "inf2"), ("inf2.xlarge", "inf2"), ("Trainium1", "trn1"), ("trn1n.32xlarge", "trn1"),
    ("Trn3", "trn3"), ("Trainium3", "trn3"), ("Inferentia", None), ("g5.xlarge", None), ("", None),
])
def test_family_of(text, family):
    assert neuron_family.family_of(text) == family


def test_sysfs_architecture_first(neuron_tree):
    arch = neuron_tree / "neuron1" / "info" / "architecture"
    arch.mkdir(parents=True)
    (arch / "device_name").write_text("Trainium2\n")
    assert neuron_family.detect(neuron_tree, neuron_ls=None) == \
        ("trn2", "sysfs neuron1/info/architecture/device_name = Trainium2")
    (arch / "instance_type").write_text("Trn2\n")
    assert neuron_family.detect(neuron_tree, neuron_ls=None)[1].endswith("instance_type = Trn2")


def _fake_neuron_ls(tmp_path, text):
    exe = tmp_path / "bin" / "neuron-ls"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\ncat <<'EOT'\n{text}\nEOT\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


def test_neuron_ls_when_sysfs_names_nothing(neuron_tree, tmp_path):
    exe = _fake_neuron_ls(tmp_path, "instance-type: inf2.24xlarge\ninstance-id: i-0\n+--------+")
    assert neuron_family.detect(neuron_tree, neuron_ls=exe) == \
        ("inf2", "neuron-ls: instance-type inf2.24xlarge")


def test_unknown_says_why(neuron_tree, tmp_path):
    exe = _fake_neuron_ls(tmp_path, "no header here")
    fam, why = neuron_family.detect(neuron_tree, neuron_ls=exe)
    assert fam is None and "names the instance type" in why
    assert neuron_family.detect(tmp_path / "none", neuron_ls=None)[0] is None
    assert not os.path.exists(tmp_path / "none")
