"""The runner end to end on a tiny notebook: run folders, reuse, failures, resume,
list/index/compare, CLI exit codes."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from workbook import cli, runner
from workbook.errors import ParameterError


def test_run_writes_everything_and_is_reused(wb_root, capsys):
    info = runner.run("smoke", cli={"n": 5})
    assert info.status == "ok" and not info.reused
    files = {p.name for p in info.run_dir.iterdir()}
    assert {"notebook.ipynb", "report.html", "results.json", "run.json"} <= files
    run = json.loads((info.run_dir / "run.json").read_text())
    assert run["status"] == "ok" and run["params"]["n"] == 5 and run["param_sources"]["n"] == "-p"
    assert run["duration_s"] > 0 and run["provenance"]["hardware"]["cpu"]["cores_logical"] >= 1
    assert "torch" in run["provenance"]["packages"]
    res = json.loads((info.run_dir / "results.json").read_text())
    assert res["status"] == "complete"
    assert res["tables"]["t"] == [{"label": "a", "n": 5, "x_ms": 7.5}]
    html = (info.run_dir / "report.html").read_text()
    assert "Plotly.newPlot" in html  # the figure is in the report, with plotly.js embedded
    assert "src=\"https://cdn.plot.ly" not in html  # plotly.js is inline, not fetched
    assert 'class="wb-code"' in html and "Status: OK" in html
    # the local kernel talks over Unix sockets in a private folder: no open TCP port, so no
    # "running over TCP without encryption" warning in the log, and nothing left behind
    assert "without encryption" not in (info.run_dir / "log.txt").read_text()
    assert not list(wb_root.glob("kernel*ipc*")) and not list(wb_root.glob("kernel-*"))

    again = runner.run("smoke", cli={"n": 5})
    assert again.reused and again.run_dir == info.run_dir
    assert "reusing finished run" in capsys.readouterr().out
    forced = runner.run("smoke", cli={"n": 5}, force=True)
    assert not forced.reused and forced.run_dir != info.run_dir
    assert (info.run_dir / "report.html").exists()  # earlier run untouched

    other = runner.run("smoke", profile="gpu")
    assert other.data["params"]["n"] == 7 and other.data["params"]["label"] == "gpu"

    rows = runner.list_runs()
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    index = (wb_root / "outputs" / "index.html").read_text()
    assert info.run_id in index and "x: 7.5 ms" in index

    from workbook.compare import compare
    text = compare(info.run_dir, other.run_dir)
    assert "param n" in text and "param label" in text  # what differs between the runs
    assert "hardware" in text


def test_failing_cell_gives_report_status_and_exit_code(wb_root):
    ok = runner.run("smoke")
    info = runner.run("smoke", cli={"fail": True})
    assert info.status == "failed" and info.exit_code == 1
    assert "RuntimeError: planned failure" in info.error
    run = json.loads((info.run_dir / "run.json").read_text())
    assert run["status"] == "failed" and "planned failure" in run["error"]
    html = (info.run_dir / "report.html").read_text()
    head = html[html.index('class="wb-header'):][:3000]
    assert "Status: FAILED" in head and "planned failure" in head
    assert "made up fallback" in head  # the fallback recorded before the failure is at the top too
    res = json.loads((info.run_dir / "results.json").read_text())
    assert res["tables"]["t"]  # what finished before the failure is kept
    assert res["status"] == "failed" and "planned failure" in res["stopped"]
    # earlier run untouched
    assert json.loads((ok.run_dir / "run.json").read_text())["status"] == "ok"
    # a failed run is never reused; it is resumed: its completed groups come back, marked as its own
    again = runner.run("smoke", cli={"fail": True})
    assert not again.reused and again.run_dir != info.run_dir
    assert again.data["resumed_from"] == info.run_id
    rows = json.loads((again.run_dir / "results.json").read_text())["tables"]["g"]
    assert [r["resumed_from"] for r in rows] == [info.run_id] * 2


def test_cli_exit_codes(wb_root, capsys):
    assert cli.main(["run", "smoke", "-p", "n", "-1"]) == 1  # the notebook's first cell rejects it
    err_run = runner.list_runs()[0]
    assert "Parameter n=-1 is not allowed: a count of at least 0" in err_run["error"]
    assert cli.main(["run", "smoke", "-p", "nope", "1"]) == 2  # the runner rejects unknown names
    assert "Parameter nope=1 is not allowed" in capsys.readouterr().err
    assert cli.main(["run", "smoke", "-p", "n", "many"]) == 2
    assert cli.main(["list"]) == 0
    assert "failed" in capsys.readouterr().out
    assert cli.main(["params", "smoke"]) == 0
    assert "n: int = 3    # how many" in capsys.readouterr().out


def test_unknown_parameter_raises_before_anything_runs(wb_root):
    with pytest.raises(ParameterError):
        runner.run("smoke", cli={"bogus": 1})
    assert not (wb_root / "outputs" / "smoke").exists()


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "workbook.cli", "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "run-all" in out.stdout


def _smoke_cli(*params):
    """`workbook run smoke` in its own process group (a test can kill the runner and its kernel)."""
    args = [sys.executable, "-m", "workbook.cli", "run", "smoke"]
    for k, v in params:
        args += ["-p", k, v]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_groups(wb_root, n, proc, timeout=180):
    """The run folder once its results.json holds ``n`` completed groups of table g."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        for res in (wb_root / "outputs" / "smoke").glob("*/results.json"):
            try:
                groups = json.loads(res.read_text()).get("groups", {}).get("g", [])
            except ValueError:
                continue
            if len(groups) >= n:
                return res.parent
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError(f"no run completed {n} groups in {timeout} s")


def _gone(pid, wait=15.0):
    t0 = time.time()
    while time.time() - t0 < wait:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


PARAMS = (("sizes", "[1, 2, 3]"), ("pause", "2.0"))


def test_sigterm_is_recorded_and_the_next_run_resumes(wb_root):
    proc = _smoke_cli(*PARAMS)
    first = _wait_for_groups(wb_root, 1, proc)
    proc.send_signal(signal.SIGTERM)  # what `timeout` or a scheduler sends to the runner alone
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out
    assert "terminated (SIGTERM)" in out and "run the same command to resume it" in out
    run = json.loads((first / "run.json").read_text())
    assert run["status"] == "interrupted" and "SIGTERM" in run["error"]
    assert "Status: INTERRUPTED" in (first / "report.html").read_text()
    res = json.loads((first / "results.json").read_text())
    # not left saying "running"
    assert res["status"] == "interrupted" and "SIGTERM" in res["stopped"]
    kernel_pid = res["tables"]["g"][0]["pid"]
    assert _gone(kernel_pid), "the notebook's kernel outlived the terminated runner"
    assert len(res["groups"]["g"]) == 1  # the kernel stopped: nothing more was measured

    info = runner.run("smoke", cli={"sizes": [1, 2, 3], "pause": 2.0})
    assert info.status == "ok" and info.data["resumed_from"] == first.name
    res = json.loads((info.run_dir / "results.json").read_text())
    rows = res["tables"]["g"]
    assert [r["size"] for r in rows] == [1, 2, 3]
    # measured by the first run
    assert rows[0]["resumed_from"] == first.name and rows[0]["pid"] == kernel_pid
    assert all("resumed_from" not in r for r in rows[1:]) and rows[1]["pid"] != kernel_pid
    assert res["resumed"] == {"from": first.name, "groups": {"g": 1}}
    head = (info.run_dir / "report.html").read_text()
    assert "Resumed:" in head and f"1 of g measured by the unfinished run {first.name}" in head
    # finished now: the same command reuses it, and --force measures everything again
    assert runner.run("smoke", cli={"sizes": [1, 2, 3], "pause": 2.0}).reused


def test_a_run_killed_outright_is_resumed_losing_nothing(wb_root):
    proc = _smoke_cli(*PARAMS)
    first = _wait_for_groups(wb_root, 2, proc)
    # the runner and its kernel, with no chance to record anything
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    res = json.loads((first / "results.json").read_text())
    assert _gone(res["tables"]["g"][0]["pid"])
    # as the kill left it
    assert json.loads((first / "run.json").read_text())["status"] == "running"
    done = len(res["groups"]["g"])
    info = runner.run("smoke", cli={"sizes": [1, 2, 3], "pause": 2.0})
    assert json.loads((first / "run.json").read_text())["status"] == "killed"  # settled when read
    rows = json.loads((info.run_dir / "results.json").read_text())["tables"]["g"]
    assert [r["size"] for r in rows] == [1, 2, 3]
    assert sum(r.get("resumed_from") == first.name for r in rows) == done >= 2
    forced = runner.run("smoke", cli={"sizes": [1, 2, 3], "pause": 2.0}, force=True)
    assert forced.data["resumed_from"] is None
    assert all("resumed_from" not in r
               for r in json.loads((forced.run_dir / "results.json").read_text())["tables"]["g"])


def test_a_sigkilled_runner_lists_as_killed_and_gc_removes_it(wb_root, capsys):
    """SIGKILL to `workbook run` alone (as the out-of-memory killer sends it): its run.json says
    "running" as the kill left it, but `workbook list`, the index and gc read it as killed."""
    proc = _smoke_cli(("sizes", "[1, 2, 3]"), ("pause", "3.0"))
    try:
        first = _wait_for_groups(wb_root, 1, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        run = json.loads((first / "run.json").read_text())
        assert run["status"] == "running" and run["pid"] == proc.pid and run["process_start"]
        assert cli.main(["list", "--status", "killed"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].split()[:3] == ["smoke", first.name, "killed"]
        assert out[1].strip().startswith(f"killed: its process (pid {proc.pid}) ended without "
                                         "recording")
        # rewritten: the process cannot come back
        run = json.loads((first / "run.json").read_text())
        assert run["status"] == "killed" and run["ended_at"] and run["duration_s"] >= 0
        assert ">killed<" in runner.write_index().read_text()
        assert _gone(json.loads((first / "results.json").read_text())["tables"]["g"][0]["pid"])
        assert cli.main(["gc", "--interrupted"]) == 0
        assert f"removed outputs/smoke/{first.name} (killed)" in capsys.readouterr().out
        assert not first.exists()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the kernel, had it outlived the runner
        except ProcessLookupError:
            pass


def test_a_reused_pid_is_not_taken_for_the_run(wb_root):
    from workbook import liveness

    me = liveness.identity()
    assert liveness.alive(me) is True
    # same pid, other process
    assert liveness.alive({**me, "process_start": "another-boot:1"}) is False
    assert liveness.alive({**me, "process_start": None}) is True  # recorded before start times were
    assert liveness.alive({**me, "host": "not-" + me["host"]}) is None  # cannot tell from here
    assert liveness.alive({**me, "pid": None}) is False
    d = _fake_run(wb_root, "reused", "k", "running", pid=os.getpid())
    run = json.loads((d / "run.json").read_text())
    (d / "run.json").write_text(json.dumps({**run, "process_start": "another-boot:1"}))
    assert runner.read_run(d)["status"] == "killed"
    assert json.loads((d / "run.json").read_text())["status"] == "killed"
    away = {**me, "status": "running", "host": "elsewhere"}
    assert liveness.settle(away) == away and "on host 'elsewhere'" in liveness.elsewhere(away)


def _fake_run(wb_root, name, key, status, *, groups=True, machine=None, pid=None, host=None):
    d = wb_root / "outputs" / "smoke" / name
    d.mkdir(parents=True)
    prov = {"hardware": {"gpus": [{"name": machine or "NVIDIA H200"}]},
            "torch": {"version": "2.11", "cuda": "13.0"}}
    (d / "run.json").write_text(json.dumps({"key": key, "status": status, "provenance": prov,
                                            "pid": pid, "host": host or socket.gethostname()}))
    done = {"groups": {"g": [{"key": {"size": 1}, "rows": [0, 1]}]}} if groups else {}
    (d / "results.json").write_text(json.dumps(done))
    return d


def test_which_unfinished_run_is_resumed(wb_root):
    machine = ("NVIDIA H200", "2.11", "13.0")
    assert runner.find_resumable("smoke", "k", machine) is None
    _fake_run(wb_root, "1-interrupted", "k", "interrupted")
    _fake_run(wb_root, "2-other-key", "other", "interrupted")
    _fake_run(wb_root, "3-finished", "k", "ok")
    _fake_run(wb_root, "4-no-groups", "k", "failed", groups=False)
    _fake_run(wb_root, "5-other-gpu", "k", "failed", machine="NVIDIA H100 80GB HBM3")
    # alive: a run in progress
    _fake_run(wb_root, "6-running-here", "k", "running", pid=os.getpid())
    assert runner.find_resumable("smoke", "k", machine).name == "1-interrupted"
    _fake_run(wb_root, "7-killed", "k", "running", pid=2 ** 22 + 12345)  # no such process
    assert runner.find_resumable("smoke", "k", machine).name == "7-killed"
    _fake_run(wb_root, "8-elsewhere", "k", "running", pid=os.getpid(), host="another-host")
    assert runner.find_resumable("smoke", "k", machine).name == "8-elsewhere"
    # other torch
    assert runner.find_resumable("smoke", "k", ("NVIDIA H200", "2.12", "13.0")) is None


def test_resuming_a_run_said_to_be_running_elsewhere_says_so(wb_root):
    here = socket.gethostname()
    assert runner.resume_caveat({"status": "interrupted", "host": "another-host"}) == ""
    # its process is checked: it is gone
    assert runner.resume_caveat({"status": "running", "host": here}) == ""
    note = runner.resume_caveat({"status": "running", "host": "another-host"})
    assert "'another-host'" in note and "cannot check" in note and "both measure the rest" in note


def test_ctrl_c_prints_one_line_and_the_report_says_how_far(wb_root):
    """SIGINT to the runner's process group, as a terminal's Ctrl-C sends it: the terminal gets the
    progress lines and one sentence, no traceback (the kernel's own messages go to the run's log);
    the report names the cell the run stopped in."""
    args = [sys.executable, "-m", "workbook.cli", "run", "smoke", "-p", "sizes", "[1, 2, 3]", "-p",
            "pause", "3.0"]
    # SIGINT at its default, as a shell's foreground job has it, whatever this test process (an
    # xdist worker) ignores
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = _wait_for_groups(wb_root, 1, proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines() == ["interrupted: the run is recorded as such; run the same "
                                        "command to resume it"]
    # one line per code cell that started
    assert "cell 1 of 6 · test notebook" in out and "cell 3 of 6" in out
    run = json.loads((first / "run.json").read_text())
    assert run["cells"][-1]["cell"] == 3 and run["cells"][-1]["status"] == "interrupted"
    html = (first / "report.html").read_text()
    assert "How far:</b> The run stopped in cell 3 of 6 (test notebook)" in html
    assert 'href="log.txt"' in html and (first / "log.txt").exists()
