"""`workbook list` filters, a closed pipe, `workbook rm` and `workbook gc`, on run folders written
here (no notebook is executed: each fake run is a run.json and a results.json)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from workbook import cli, runner


def fake_run(root, notebook, run_id, status="ok", params=None, headline=None, started=None,
             **extra):
    """outputs/<notebook>/<run_id>/ with a run.json (and a results.json with its headline)."""
    d = root / "outputs" / notebook / run_id
    run = {"notebook": notebook, "run_id": run_id, "status": status,
           "error": extra.pop("error", None), "params": params or {}, "duration_s": 1.5,
           "started_at": started or f"2025-01-01T{run_id[-8:]}", "provenance": {}, **extra}
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps(run))
    (d / "results.json").write_text(json.dumps({"notebook": notebook, "headline": headline or {},
                                                "tables": {}}))
    return d


@pytest.fixture
def runs(wb_root):
    """Five runs of two notebooks, oldest first by started_at (the last 8 characters of the id)."""
    fake_run(wb_root, "smoke", "r-10:00:00",
             params={"n": 3, "sizes": [1, 2], "label": "a", "fast": True},
             headline={"best_b1_latency_ms": 1162.3, "decode_speedup_over_one_process": 0.05835})
    fake_run(wb_root, "smoke", "r-11:00:00", status="failed", error="RuntimeError: boom",
             params={"n": 5, "sizes": [1, 2], "label": "b", "fast": False})
    fake_run(wb_root, "other", "r-12:00:00", params={"n": 3.0})
    fake_run(wb_root, "smoke", "r-13:00:00", status="interrupted",
             params={"n": 3, "sizes": [224, 384]})
    fake_run(wb_root, "other", "r-14:00:00", status="running", params={"n": 1})
    return wb_root


def _ids(out: str) -> list[str]:
    return [line.split()[1] for line in out.splitlines() if line.startswith(("smoke", "other"))]


def test_list_all_newest_first_with_labelled_headline(runs, capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert _ids(out) == ["r-14:00:00", "r-13:00:00", "r-12:00:00", "r-11:00:00", "r-10:00:00"]
    assert "best batch-1 latency: 1162 ms, decode speed-up over one process: 0.0584×" in out
    assert "RuntimeError: boom" in out


@pytest.mark.parametrize("args, ids", [
    (["--notebook", "smoke"], ["r-13:00:00", "r-11:00:00", "r-10:00:00"]),
    (["--status", "failed"], ["r-11:00:00"]),
    (["--status", "ok", "--notebook", "other"], ["r-12:00:00"]),
    # 3 matches a recorded 3.0 too
    (["--param", "n=3"], ["r-13:00:00", "r-12:00:00", "r-10:00:00"]),
    # repeatable: every one must match
    (["--param", "n=3", "--param", "sizes=[1, 2]"], ["r-10:00:00"]),
    (["--param", "label=a"], ["r-10:00:00"]),
    (["--param", "fast=false"], ["r-11:00:00"]),  # YAML: the boolean, not the text
    (["--param", "n=true"], []),  # a flag is not the number 1
    (["--param", "nope=1"], []),
    (["-n", "2"], ["r-14:00:00", "r-13:00:00"]),
    (["--notebook", "smoke", "--last", "1"], ["r-13:00:00"]),  # the newest after the filters
])
def test_list_filters(runs, capsys, args, ids):
    assert cli.main(["list", *args]) == 0
    out = capsys.readouterr().out
    assert _ids(out) == ids
    if not ids:
        assert out.strip() == "no runs match those filters"


def test_list_with_no_runs_at_all(wb_root, capsys):
    assert cli.main(["list"]) == 0
    assert capsys.readouterr().out.strip() == "no runs yet (workbook run NOTEBOOK)"


@pytest.mark.parametrize("args, message", [
    (["--notebook", "nosuch"], "--notebook='nosuch' is not allowed: one of other, smoke."),
    (["--param", "n"], "--param='n' is not allowed: NAME=VALUE, e.g. --param n=3"),
    (["--param", "=3"], "--param='=3' is not allowed: NAME=VALUE"),
])
def test_list_refuses_bad_filters_in_one_sentence(runs, capsys, args, message):
    assert cli.main(["list", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message) and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--status", "done"], "argument --status: invalid choice: 'done'"),
    (["-n", "0"], "-n/--last='0' is not allowed: a whole number of runs, at least 1"),
    (["-n", "two"], "-n/--last='two' is not allowed"),
])
def test_list_refuses_bad_status_and_count(runs, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        cli.main(["list", *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture
def many_runs(wb_root):
    """Enough runs that `workbook list` writes far more than a pipe holds (64 KiB)."""
    for i in range(800):
        fake_run(wb_root, "smoke", f"r{i:04d}-00:00:00", started=f"2025-01-01T{i:06d}",
                 headline={"latency_ms": 1.0 + i, "label_text": "x" * 40})
    return wb_root


def test_list_into_a_closed_pipe_is_quiet(many_runs):
    """`workbook list | head -1`: the reader leaves after a line; no traceback, SIGPIPE's status."""
    proc = subprocess.Popen([sys.executable, "-m", "workbook.cli", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()  # what head does after its one line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert first.startswith("smoke") and "r0799-00:00:00" in first
    assert err == ""  # no BrokenPipeError traceback, no "Exception ignored" at exit


def test_list_piped_to_head_in_a_shell(many_runs):
    cmd = f"{sys.executable} -m workbook.cli list | head -1; echo \"rc=${{PIPESTATUS[0]}}\""
    out = subprocess.run(cmd, shell=True, executable="/bin/bash", capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.splitlines()[0].startswith("smoke")
    assert out.stdout.splitlines()[1] == "rc=141"
    assert out.stderr == ""


# --- rm and gc
# --------------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def mixed(wb_root):
    """Runs of every status, one said to be running by this very process (alive) and one by a gone
    one, one said to be running on another host, and a committed reference holding a run.json."""
    here = socket.gethostname()
    out = {
        "ok": fake_run(wb_root, "smoke", "ok-10:00:00"),
        "failed": fake_run(wb_root, "smoke", "failed-11:00:00", status="failed",
                           error="RuntimeError: x"),
        "failed2": fake_run(wb_root, "other", "failed-12:00:00", status="failed"),
        "interrupted": fake_run(wb_root, "smoke", "intr-13:00:00", status="interrupted"),
        "live": fake_run(wb_root, "smoke", "live-14:00:00", status="running", pid=os.getpid(),
                         host=here),
        "killed": fake_run(wb_root, "smoke", "killed-15:00:00", status="running", pid=_dead_pid(),
                           host=here),
        "elsewhere": fake_run(wb_root, "smoke", "away-16:00:00", status="running", pid=1,
                              host="not-" + here),
    }
    ref = wb_root / "outputs" / "reference" / "cpu" / "smoke"
    ref.mkdir(parents=True)
    (ref / "run.json").write_text(json.dumps({"notebook": "smoke", "run_id": "smoke",
                                              "status": "failed"}))
    (ref / "results.json").write_text("{}")
    out["reference"] = ref
    return out


def _left(mixed) -> set[str]:
    return {k for k, d in mixed.items() if d.exists()}


def test_rm_removes_runs_and_rewrites_the_index(mixed, wb_root, capsys):
    # a run named twice: once
    assert cli.main(["rm", "ok-10", "other/failed-12:00:00", "ok-10:00:00"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["removed outputs/smoke/ok-10:00:00 (ok)",
                   "removed outputs/other/failed-12:00:00 (failed)", "index: outputs/index.html"]
    assert _left(mixed) == {"failed", "interrupted", "live", "killed", "elsewhere", "reference"}
    index = (wb_root / "outputs" / "index.html").read_text()
    assert "failed-11:00:00" in index and "ok-10:00:00" not in index


def test_rm_refuses_what_is_not_a_run_folder_and_removes_nothing(mixed, tmp_path, capsys):
    stray = tmp_path / "elsewhere" / "run"
    stray.mkdir(parents=True)
    (stray / "run.json").write_text("{}")
    for target, where in ((stray, str(stray)), (mixed["reference"], "outputs/reference/cpu/smoke")):
        assert cli.main(["rm", "ok-10", str(target)]) == 2
        err = capsys.readouterr().err
        assert err == (f"error: {str(target)!r} is not a run folder under outputs/ ({where}): rm "
                       "removes only outputs/<notebook>/<run-id> folders, never "
                       "outputs/reference/.\n")
    assert cli.main(["rm", "no-such-run"]) == 2
    assert "No run matches 'no-such-run'" in capsys.readouterr().err
    # all or nothing: ok-10 was not removed either
    assert stray.exists() and _left(mixed) == set(mixed)


def test_rm_refuses_a_run_still_running(mixed, capsys):
    assert cli.main(["rm", "live-14"]) == 2
    assert capsys.readouterr().err == ("error: Run smoke/live-14:00:00 is still running (pid "
                                       f"{os.getpid()}): stop it before removing it.\n")
    assert mixed["live"].exists()


def test_gc_failed(mixed, capsys):
    assert cli.main(["gc", "--failed"]) == 0
    out = capsys.readouterr().out
    assert _left(mixed) == {"ok", "interrupted", "live", "killed", "elsewhere", "reference"}
    assert "removed outputs/smoke/failed-11:00:00 (failed)" in out
    assert "removed outputs/other/failed-12:00:00" in out
    assert "skipped outputs/smoke/live-14:00:00: still running" in out
    assert "gc: removed 2 failed runs; kept 1 interrupted, 1 killed, 1 ok" in out


def test_gc_interrupted_takes_killed_runs_too(mixed, capsys):
    assert cli.main(["gc", "--interrupted"]) == 0
    out = capsys.readouterr().out
    assert _left(mixed) == {"ok", "failed", "failed2", "live", "elsewhere", "reference"}
    # recorded as running, its process gone
    assert "removed outputs/smoke/killed-15:00:00 (killed)" in out
    assert "skipped outputs/smoke/away-16:00:00: recorded as running on host" in out


def test_gc_dry_run_and_both(mixed, capsys):
    assert cli.main(["gc", "--failed", "--interrupted", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert _left(mixed) == set(mixed)
    assert "would remove outputs/smoke/intr-13:00:00 (interrupted)" in out
    assert ("gc: would remove 4 failed and interrupted runs; kept 1 ok (--dry-run: nothing removed)"
            in out)
    assert cli.main(["gc", "--failed", "--interrupted"]) == 0
    assert _left(mixed) == {"ok", "live", "elsewhere", "reference"}


def test_gc_needs_a_status(mixed, capsys):
    assert cli.main(["gc"]) == 2
    assert capsys.readouterr().err == ("error: gc needs --failed and/or --interrupted: it removes "
                                       "only runs that failed or were interrupted, never ones that "
                                       "finished ok.\n")
    assert _left(mixed) == set(mixed)


def test_list_and_index_read_a_run_whose_process_is_gone_as_killed(mixed, wb_root, capsys):
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    killed = next(i for i, ln in enumerate(lines) if "killed-15:00:00" in ln)
    assert lines[killed].split()[2] == "killed"
    assert lines[killed + 1].strip().startswith("killed: its process (pid ")
    away = next(i for i, ln in enumerate(lines) if "away-16:00:00" in ln)
    assert lines[away].split()[2] == "running"  # another host's run cannot be checked from here
    assert lines[away + 1].strip().startswith("on host 'not-")
    assert next(ln for ln in lines if "live-14:00:00" in ln).split()[2] == "running"
    run = json.loads((mixed["killed"] / "run.json").read_text())
    assert run["status"] == "killed" and run["error"].startswith("killed: ")  # written back
    assert cli.main(["list", "--status", "killed"]) == 0
    assert [ln.split()[1] for ln in capsys.readouterr().out.splitlines()
            if not ln.startswith(" ")] == ["killed-15:00:00"]
    page = runner.write_index().read_text()
    assert '<b>killed</b><br><small>killed: its process' in page
    assert "which this machine cannot check" in page
