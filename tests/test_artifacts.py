"""The compiled-artifact cache: keys that change with every input to compilation, and
complete-or-absent entries.

A key must be stable (same parts, same key, whatever the dict order) and must change when any part
changes (model, weights, shape, dtype, backend options, library versions), or a stale artifact would
be loaded for a different compile. Entries count as present only once committed, so a half-written
folder from a crashed run is compiled afresh.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch

from workbook import artifacts

PARTS = {
    "model": "SigLIP-Tiny",
    "weights": "0123456789abcdef",
    "shape": [1, 3, 112, 112],
    "dtype": "float32",
    "mode": "compile",
    "cores": 1,
    "options": {"compiler_args": ["--model-type", "transformer"], "auto_cast": "matmult",
                "auto_cast_type": "bf16"},
    "versions": {"torch": "2.0.0", "timm": "1.0.0", "torch-neuronx": None, "neuronx-cc": None,
                 "triton": None},
}


def tiny_module(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))


# --- make_key
# -----------------------------------------------------------------------------------------------


def test_make_key_is_stable_and_order_independent():
    key = artifacts.make_key(PARTS)
    assert key == artifacts.make_key(copy.deepcopy(PARTS))
    reordered = dict(reversed(list(PARTS.items())))
    reordered["options"] = dict(reversed(list(PARTS["options"].items())))
    assert artifacts.make_key(reordered) == key
    assert len(key) == 20 and all(c in "0123456789abcdef" for c in key)


@pytest.mark.parametrize("path, value", [
    (("model",), "ViT-SO400M-14-SigLIP"),
    (("weights",), "fedcba9876543210"),
    (("shape",), [2, 3, 112, 112]),
    (("shape",), [1, 3, 224, 224]),
    (("dtype",), "bfloat16"),
    (("mode",), "compile-max-autotune"),
    (("cores",), 2),
    (("options", "auto_cast"), "none"),
    (("options", "compiler_args"), ["--model-type", "transformer", "-O2"]),
    (("versions", "torch"), "2.0.1"),
    (("versions", "torch-neuronx"), "2.1.0"),
])
def test_make_key_changes_with_every_part(path, value):
    parts = copy.deepcopy(PARTS)
    d = parts
    for k in path[:-1]:
        d = d[k]
    assert d[path[-1]] != value
    d[path[-1]] = value
    assert artifacts.make_key(parts) != artifacts.make_key(PARTS)


def test_make_key_distinguishes_a_missing_part_from_a_none_one():
    parts = copy.deepcopy(PARTS)
    del parts["versions"]["triton"]
    assert artifacts.make_key(parts) != artifacts.make_key(PARTS)


# --- weights_digest
# -----------------------------------------------------------------------------------------


def test_weights_digest_equal_for_identical_modules():
    a, b = tiny_module(0), tiny_module(0)
    assert a is not b
    assert artifacts.weights_digest(a) == artifacts.weights_digest(b)
    assert artifacts.weights_digest(a) == artifacts.weights_digest(copy.deepcopy(a))
    assert len(artifacts.weights_digest(a)) == 16


def test_weights_digest_changes_when_one_weight_changes():
    a = tiny_module(0)
    before = artifacts.weights_digest(a)
    old = a[0].weight[0, 0].item()
    with torch.no_grad():
        a[0].weight[0, 0] += 1e-3
    assert artifacts.weights_digest(a) != before
    with torch.no_grad():
        a[0].weight[0, 0] = old
    assert artifacts.weights_digest(a) == before  # back to the same values: same digest again


def test_weights_digest_changes_with_seed_and_dtype():
    a = tiny_module(0)
    assert artifacts.weights_digest(a) != artifacts.weights_digest(tiny_module(1))
    assert artifacts.weights_digest(a) != artifacts.weights_digest(copy.deepcopy(a).double())


def test_weights_digest_handles_bfloat16():
    a = copy.deepcopy(tiny_module(0)).to(torch.bfloat16)
    b = copy.deepcopy(tiny_module(0)).to(torch.bfloat16)
    da = artifacts.weights_digest(a)
    assert da == artifacts.weights_digest(b)
    # fp32 and bf16 weights are different artifacts
    assert da != artifacts.weights_digest(tiny_module(0))
    with torch.no_grad():
        b[2].bias[0] += 1.0
    assert artifacts.weights_digest(b) != da


def test_weights_digest_sees_buffers():
    class WithBuffer(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.register_buffer("scale", torch.tensor([v]))

    torch.manual_seed(0)
    a = WithBuffer(1.0)
    b = copy.deepcopy(a)
    b.scale.fill_(2.0)
    assert artifacts.weights_digest(a) != artifacts.weights_digest(b)


# --- entry
# --------------------------------------------------------------------------------------------------


def test_entry_creates_folder_and_is_absent_until_commit(tmp_path):
    root = tmp_path / "cache"
    e = artifacts.entry(root, "cpu", PARTS)
    assert e.dir.is_dir()
    assert e.dir == root / "cpu" / e.key
    assert e.key == artifacts.make_key({"backend": "cpu", **PARTS})
    assert not e.exists()
    # an artifact without meta.json does not count
    (e.dir / "half-written.pt").write_bytes(b"\0" * 8)
    assert not e.exists()
    e.commit(compile_s=1.5)
    assert e.exists()
    assert e.meta_path == e.dir / "meta.json"


def test_entry_meta_round_trips_the_parts(tmp_path):
    e = artifacts.entry(tmp_path, "neuron", PARTS)
    e.commit(compile_s=2.25, mode="trace")
    meta = e.meta()
    assert meta == json.loads((e.dir / "meta.json").read_text())
    assert meta["key"] == e.key
    assert meta["parts"] == {"backend": "neuron", **PARTS}
    assert meta["compile_s"] == 2.25 and meta["mode"] == "trace"
    assert isinstance(meta["created"], float) and meta["created"] > 0


def test_entry_same_parts_share_a_folder_and_different_backends_do_not(tmp_path):
    a = artifacts.entry(tmp_path, "cpu", PARTS)
    a.commit()
    again = artifacts.entry(str(tmp_path), "cpu", copy.deepcopy(PARTS))  # a str root works too
    assert again.dir == a.dir and again.exists()
    other = artifacts.entry(tmp_path, "cuda", PARTS)
    assert other.key != a.key and other.dir != a.dir
    assert not other.exists()
    changed = artifacts.entry(tmp_path, "cpu", {**PARTS, "dtype": "bfloat16"})
    assert changed.dir != a.dir and not changed.exists()


def test_entry_without_root_uses_the_default_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(artifacts, "default_dir", lambda: tmp_path / "default")
    e = artifacts.entry(None, "cpu", PARTS)
    assert e.dir == tmp_path / "default" / "cpu" / e.key and e.dir.is_dir()
    e2 = artifacts.entry("", "cpu", PARTS)
    assert e2.dir == e.dir


def test_default_dir_is_artifacts_at_the_repo_root():
    from workbook.paths import repo_root

    assert artifacts.default_dir() == repo_root() / "artifacts"
