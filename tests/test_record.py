"""The recorder: results.json written at once and after every change, JSON-safe, run folders."""
import json
import math
import os
import stat

import numpy as np
import torch

from workbook import record
from workbook.record import RUN_DIR_ENV, Recorder, _jsonable, run_dir_for, write_json_atomic


def _read(rec):
    return json.loads(rec.path.read_text())


def test_recorder_persists_every_change(tmp_path, wb_root):
    rec = Recorder("nb", {"n": 3, "sizes": [1, 2]}, run_dir=tmp_path / "run")
    assert rec.path == tmp_path / "run" / "results.json"
    d = _read(rec)
    assert d["status"] == "running" and d["notebook"] == "nb"
    assert d["params"] == {"n": 3, "sizes": [1, 2]}
    assert d["headline"] == {} and d["tables"] == {}
    assert d["fallbacks"] == [] and d["not_measured"] == []
    assert d["hardware"]["cpu"]["cores_logical"] >= 1
    assert d["versions"]["python"] and "packages" in d["versions"] and "version" in d["versions"]
    assert "commit" in d["git"] and "finished_at" not in d

    rec.add("lat", {"size": 1, "ms": 1.5})
    assert _read(rec)["tables"] == {"lat": [{"size": 1, "ms": 1.5}]}
    rec.add("lat", {"size": 2, "ms": 2.5})
    rec.add("acc", {"cos": 0.99})
    d = _read(rec)
    assert d["tables"]["lat"] == [{"size": 1, "ms": 1.5}, {"size": 2, "ms": 2.5}]
    assert d["tables"]["acc"] == [{"cos": 0.99}]
    assert rec.table("lat")[1]["ms"] == 2.5 and rec.table("missing") == []

    rec.headline(best_ms=1.5)
    rec.headline(speedup=2.0)
    assert _read(rec)["headline"] == {"best_ms": 1.5, "speedup": 2.0}

    rec.fallback("ran on cpu")
    assert _read(rec)["fallbacks"] == ["ran on cpu"]
    rec.note("a note")
    assert _read(rec)["notes"] == ["a note"]
    rec.not_measured("triton", "not installed")
    assert _read(rec)["not_measured"] == [{"what": "triton", "why": "not installed"}]
    rec.set(device="cpu", device_reason="requested")
    d = _read(rec)
    assert d["device"] == "cpu" and d["device_reason"] == "requested" and d["status"] == "running"

    rec.finish()
    d = _read(rec)
    assert d["status"] == "complete" and d["finished_at"]
    assert d["tables"]["lat"][0] == {"size": 1, "ms": 1.5}  # earlier content survives


def test_recorder_row_is_copied(tmp_path, wb_root):
    rec = Recorder("nb", {}, run_dir=tmp_path / "run")
    row = {"a": 1}
    rec.add("t", row)
    row["a"] = 2
    assert rec.table("t") == [{"a": 1}]


def test_non_finite_and_tensor_values(tmp_path, wb_root):
    rec = Recorder("nb", {"x": float("nan")}, run_dir=tmp_path / "run")
    rec.add("t", {"nan": float("nan"), "inf": float("inf"), "ninf": -math.inf,
                  "t0": torch.tensor(2.5), "ti": torch.tensor(7),
                  "tnan": torch.tensor(float("nan")), "np": np.float32(0.5), "npi": np.int64(4),
                  "b": torch.tensor(True)})
    rec.headline(ms=torch.tensor(1.25, dtype=torch.float64))
    d = _read(rec)
    assert d["params"] == {"x": None}
    assert d["tables"]["t"] == [{"nan": None, "inf": None, "ninf": None, "t0": 2.5, "ti": 7,
                                 "tnan": None, "np": 0.5, "npi": 4, "b": True}]
    assert d["headline"] == {"ms": 1.25}
    assert "NaN" not in rec.path.read_text() and "Infinity" not in rec.path.read_text()


def test_jsonable_structures():
    got = _jsonable({1: (1, 2), "p": [float("nan"), {"q": torch.tensor(3.0)}]})
    assert got == {"1": [1, 2], "p": [None, {"q": 3.0}]}
    assert _jsonable(None) is None and _jsonable(True) is True
    assert _jsonable(object.__new__(type("Thing", (), {"__str__": lambda s: "thing"}))) == "thing"


def test_one_element_tensor_becomes_a_number():
    assert _jsonable(torch.tensor([2.5])) == 2.5


def test_run_dir_for_env_and_adhoc(wb_root, monkeypatch, tmp_path):
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "given"))
    assert run_dir_for("nb") == tmp_path / "given"
    monkeypatch.delenv(RUN_DIR_ENV)
    d = run_dir_for("nb")
    assert d.parent == wb_root / "outputs" / "nb"
    assert d.name.startswith("adhoc-") and d.name.endswith(f"-{os.getpid()}")


def test_start_uses_run_dir_env(wb_root, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "runX"))
    rec = record.start("nb", {"a": 1})
    assert rec.path == tmp_path / "runX" / "results.json" and rec.path.exists()
    assert f"results: {rec.path}" in capsys.readouterr().out
    assert record.load(rec.path)["params"] == {"a": 1}


def test_start_without_env_goes_to_adhoc(wb_root, monkeypatch):
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    rec = record.start("nb2", {})
    assert rec.path.parent.parent == wb_root / "outputs" / "nb2"
    assert rec.path.parent.name.startswith("adhoc-") and rec.path.exists()


def test_write_json_atomic(tmp_path):
    path = tmp_path / "deep" / "dir" / "x.json"
    write_json_atomic(path, {"a": [1, float("inf")]})
    write_json_atomic(path, {"a": [2]})  # replaces
    assert json.loads(path.read_text()) == {"a": [2]}
    assert path.read_text().endswith("\n")
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temp files left
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def _prior_run(tmp_path, params, groups):
    """An unfinished run's folder whose recorder completed ``groups`` (key -> rows) of table 'g'."""
    prior = Recorder("nb", params, run_dir=tmp_path / "prior")
    for key, rows in groups:
        prior.add_group("g", rows, **key)
    return prior


def test_add_group_writes_rows_and_marks_them_complete(tmp_path, wb_root):
    rec = Recorder("nb", {"n": 1}, run_dir=tmp_path / "run")
    rec.add_group("g", [{"size": 1, "impl": "a", "ms": 1.0}, {"size": 1, "impl": "b", "ms": 2.0}],
                  size=1)
    rec.add("g", {"size": 2, "impl": "a", "ms": 3.0})  # a row outside any group: never resumed
    d = _read(rec)
    assert [r["ms"] for r in d["tables"]["g"]] == [1.0, 2.0, 3.0]
    assert d["groups"]["g"] == [{"key": {"size": 1}, "rows": [0, 2]}]
    assert rec.done_group("g", size=1) is None  # nothing is resumed without the runner's hand-over


def test_done_group_hands_back_what_the_unfinished_run_completed(tmp_path, wb_root, monkeypatch):
    params = {"n": 1, "sizes": [1, 2, 3]}
    _prior_run(tmp_path, params, [({"size": 1, "impl": "x"}, [{"size": 1, "ms": 1.5}]),
                                  ({"size": 2, "impl": "x"},
                                   [{"size": 2, "ms": 2.5}, {"size": 2, "ms": 2.6}])])
    monkeypatch.setenv(record.RESUME_ENV, str(tmp_path / "prior"))
    rec = Recorder("nb", params, run_dir=tmp_path / "run")
    got = rec.done_group("g", impl="x", size=2)  # key order does not matter
    assert got == [{"size": 2, "ms": 2.5, "resumed_from": "prior"},
                   {"size": 2, "ms": 2.6, "resumed_from": "prior"}]
    assert rec.done_group("g", size=3, impl="x") is None  # never completed there: measure it
    assert rec.done_group("g", size=1, impl="y") is None
    rec.add_group("g", [{"size": 3, "ms": 3.5}], size=3, impl="x")
    d = _read(rec)
    assert d["resumed"] == {"from": "prior", "groups": {"g": 1}}
    assert [r.get("resumed_from") for r in d["tables"]["g"]] == ["prior", "prior", None]
    assert [g["rows"] for g in d["groups"]["g"]] == [[0, 2], [2, 3]]

    # resuming the resumed run keeps the name of the run that measured each row
    monkeypatch.setenv(record.RESUME_ENV, str(tmp_path / "run"))
    again = Recorder("nb", params, run_dir=tmp_path / "third")
    assert again.done_group("g", size=2, impl="x")[0]["resumed_from"] == "prior"
    got = again.done_group("g", size=3, impl="x")
    assert got == [{"size": 3, "ms": 3.5, "resumed_from": "run"}]


def test_prior_with_other_parameters_is_not_resumed(tmp_path, wb_root, monkeypatch):
    _prior_run(tmp_path, {"n": 1}, [({"size": 1}, [{"size": 1, "ms": 1.5}])])
    monkeypatch.setenv(record.RESUME_ENV, str(tmp_path / "prior"))
    rec = Recorder("nb", {"n": 2}, run_dir=tmp_path / "run")
    assert rec.done_group("g", size=1) is None
    assert "not resumed from prior: its recorded parameters differ" in _read(rec)["notes"]
    monkeypatch.setenv(record.RESUME_ENV, str(tmp_path / "missing"))
    assert Recorder("nb", {"n": 1}, run_dir=tmp_path / "run2").done_group("g", size=1) is None


def _set_prior_machine(tmp_path, hardware):
    path = tmp_path / "prior" / "results.json"
    d = json.loads(path.read_text())
    d["hardware"] = hardware
    path.write_text(json.dumps(d))


def test_timed_groups_come_only_from_the_same_machine(tmp_path, wb_root, monkeypatch):
    """The runner resumes on any machine of the kind; times from another one are measured again."""
    from workbook import report

    params = {"n": 1}
    _prior_run(tmp_path, params,
               [({"size": 1}, [{"size": 1, "ms": 1.5}]), ({"size": 2}, [{"size": 2, "ms": 2.5}])])
    monkeypatch.setenv(record.RESUME_ENV, str(tmp_path / "prior"))
    # the prior was written on this machine
    same = Recorder("nb", params, run_dir=tmp_path / "same")
    got = same.done_group("g", timed=True, size=1)
    assert got == [{"size": 1, "ms": 1.5, "resumed_from": "prior"}]

    other = {"gpus": [{"name": "NVIDIA H200", "uuid": "GPU-elsewhere"}], "hostname": "vm",
             "boot_id": "b"}
    _set_prior_machine(tmp_path, other)
    rec = Recorder("nb", params, run_dir=tmp_path / "run")
    # a time from another machine: measure it here
    assert rec.done_group("g", timed=True, size=1) is None
    # not a time: taken
    assert rec.done_group("g", size=2) == [{"size": 2, "ms": 2.5, "resumed_from": "prior"}]
    rec.add_group("g", [{"size": 1, "ms": 1.4}], size=1)
    d = _read(rec)
    assert d["resumed"] == {"from": "prior", "groups": {"g": 1}, "remeasured": {"g": 1}}
    head = report.summary_html({"notebook": "nb", "status": "ok", "run_id": "run"}, d)
    assert ("Measured again:</b> 1 of g, which the unfinished run prior had timed on another "
            "machine") in head

    # recorded without ids
    _set_prior_machine(tmp_path, {"gpus": [{"name": "NVIDIA H200"}], "hostname": "vm"})
    old = Recorder("nb", params, run_dir=tmp_path / "old")
    assert old.done_group("g", timed=True, size=1) is None
