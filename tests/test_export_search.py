"""The export-configuration search: candidate and pruning rules on hand-worked examples, tries in
their own processes (crash, signal, hang), the state file surviving SIGKILL of the search, the same
answer however often it was killed, no process of a try outliving the search, and the validators.

Runs anywhere (no accelerator): tries are tiny Python scripts that the generic CommandValidator
runs; the cpu validator's tensor-parallel load runs once, through the command line.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from workbook import proc
from workbook.errors import ParameterError, WorkbookError
from workbook.llm import attempts as at
from workbook.llm import search as es
from workbook.llm import search_plan as sp
from workbook.record import write_json_atomic

PY = sys.executable
# = sp.candidates(8, 2, 8, 8192, [1, 4, 8])
CANDS = {"tps": [8, 4, 2], "batches": [8, 4, 1], "seqs": [4096, 2048, 1024]}

# A fake try: notes its start and end in a side file, then is valid iff batch * seq <= tp * 4096.
FAKE = textwrap.dedent("""
    import os, sys, time
    tp, b, s, side, pause = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                             float(sys.argv[5]))
    if sys.argv[6:] == [f"{tp},{b},{s}"]:  # the one slow try, to be killed in
        pause = 1.5
    def note(what):
        fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{what} {tp} {b} {s}\\n".encode())
        os.close(fd)
    note("start")
    print(f"trying tp={tp} batch={b} seq={s}", flush=True)
    time.sleep(pause)
    note("done")
    sys.exit(0 if b * s <= tp * 4096 else 1)
""")
# Hand-worked with the rule above, largest first:
# tp 8: (8,8,4096) valid, (8,4,4096) valid, (8,1,4096) valid;
# tp 4: (4,8,4096) fails, (4,8,2048) valid, (4,4,4096) valid, (4,1,4096) valid;
# tp 2: (2,8,4096) (2,8,2048) fail, (2,8,1024) valid, (2,4,4096) fails, (2,4,2048) valid,
#       (2,1,4096) valid.
EXPECTED_TRIES = [(8, 8, 4096), (8, 4, 4096), (8, 1, 4096),
                  (4, 8, 4096), (4, 8, 2048), (4, 4, 4096), (4, 1, 4096),
                  (2, 8, 4096), (2, 8, 2048), (2, 8, 1024),
                  (2, 4, 4096), (2, 4, 2048), (2, 1, 4096)]


def _oracle(tp, b, s):
    return "valid" if b * s <= tp * 4096 else "failed"


def _fake_validator(tmp_path, pause=0.2, slow=""):
    script = tmp_path / "fake_try.py"
    script.write_text(FAKE)
    side = tmp_path / "side.txt"
    cmd = f"{{python}} -S {script} {{tp}} {{batch}} {{seq}} {side} {pause} {slow}".strip()
    return at.CommandValidator(cmd), side


def _statuses(state):
    return {(r["tp"], r["batch"], r["seq"]): r["status"] for r in sp.summary(state)}


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _procs_with_token(token):
    needle, found = f"{at.TOKEN_ENV}={token}".encode(), []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (d / "environ").read_bytes().split(b"\0") and _alive(d.name):
                found.append(int(d.name))
        except OSError:
            continue
    return found


def _gone(token, within=5.0):
    """No process of the try marked by ``token`` is left, at the latest ``within`` seconds from now.
    """
    t_end = time.monotonic() + within
    while _procs_with_token(token):
        if time.monotonic() > t_end:
            return False
        time.sleep(0.02)
    return True


def _quiet(*_):
    pass


# ---------------------------------------------------------------- candidates

def test_candidates_hand_worked():
    c = sp.candidates(32, 2, 32, 32768)
    assert c == {"tps": [32, 16, 8, 4, 2], "batches": [128, 64, 32, 16, 8, 4, 1],
                 "seqs": [16384, 8192, 4096, 2048, 1024]}
    # 24 heads: 16 and 32 do not divide them; 6, 12 and 24 do (multiples of 2 cores, at most 32)
    assert sp.candidates(32, 2, 24, 32768)["tps"] == [24, 12, 8, 6, 4, 2]
    # tp equal to every core is a candidate ("not above" the total); 8 cores per device allow only
    # 8, 16, 32
    assert sp.candidates(32, 8, 32, 4096, batch_sizes=[4, 1])["tps"] == [32, 16, 8]
    # max positions 4096: strictly below -> 2048 and 1024; a non-power max keeps the powers below it
    assert sp.candidates(2, 2, 2, 4096)["seqs"] == [2048, 1024]
    assert sp.candidates(2, 2, 2, 5000, min_seq=512)["seqs"] == [4096, 2048, 1024, 512]
    assert sp.candidates(4, 1, 8, 2048, batch_sizes=(2, 16, 1)) == {
        "tps": [4, 2], "batches": [16, 2, 1], "seqs": [1024]}


@pytest.mark.parametrize("kwargs, name", [
    (dict(total_cores=1), "total_cores"),
    (dict(total_cores=True), "total_cores"),
    (dict(cores_per_device=0), "cores_per_device"),
    (dict(cores_per_device=64), "cores_per_device"),
    (dict(num_heads=7), "num_heads"),        # no even tp divides 7
    (dict(max_positions=1024), "max_positions"),  # nothing strictly below 1024 and at least 1024
    (dict(batch_sizes=[]), "batch_sizes"),
    (dict(batch_sizes=[4, 4]), "batch_sizes"),
    (dict(batch_sizes=[0, 1]), "batch_sizes"),
    (dict(min_seq=1000), "min_seq"),
])
def test_candidates_bad_input_names_the_parameter(kwargs, name):
    args = dict(total_cores=32, cores_per_device=2, num_heads=32, max_positions=32768) | kwargs
    with pytest.raises(ParameterError) as e:
        sp.candidates(**args)
    msg = str(e.value)
    assert msg.startswith(f"Parameter {name}=") and "not allowed" in msg and msg.count("\n") == 0


# ---------------------------------------------------------------- pruning rules

def test_valid_implies_shorter_sequences():
    c = sp.candidates(32, 2, 32, 32768)
    rows = {r[:3]: r[3:] for r in sp.plan(c, {(8, 4, 4096): "valid"})}
    for s in (2048, 1024):
        status, reason = rows[(8, 4, s)]
        assert status == "valid-by-rule" and "(8, 4, 4096)" in reason
    assert rows[(8, 4, 4096)] == ("valid", "tested")
    # longer sequences are not implied by anything: still to try
    assert rows[(8, 4, 16384)][0] == rows[(8, 4, 8192)][0] == "pending"
    # nothing leaks to another tp or batch size
    assert rows[(16, 4, 2048)][0] == rows[(8, 1, 2048)][0] == "pending"
    assert len(rows) == 5 * 7 * 5


def test_resume_skips_batches_above_the_largest_valid_one():
    c = sp.candidates(32, 2, 32, 32768)
    results = [{"tp": 8, "batch": 16, "seq": 8192, "status": "valid"},
               {"tp": 8, "batch": 32, "seq": 1024, "status": "failed"}]
    rows = {r[:3]: r[3:] for r in sp.plan(c, results)}
    for b in (32, 64, 128):
        for s in c["seqs"]:
            if (b, s) == (32, 1024):
                # a result is never overridden by a rule
                assert rows[(8, b, s)] == ("failed", "tested")
                continue
            status, reason = rows[(8, b, s)]
            assert status == "skipped-by-rule" and "largest valid batch size is 16" in reason
    assert [rows[(8, 16, s)][0] for s in c["seqs"]] == [
        "pending", "valid", "valid-by-rule", "valid-by-rule", "valid-by-rule"]
    assert all(rows[(8, b, s)][0] == "pending" for b in (8, 4, 1) for s in c["seqs"])
    assert all(rows[(16, 128, s)][0] == "pending" for s in c["seqs"])  # other tps untouched


def test_plan_order_drives_a_hand_worked_search():
    """Following plan() (first pending, then re-plan) tries exactly the hand-worked sequence,
    largest first."""
    results, tried = {}, []
    while pending := [r for r in sp.plan(CANDS, results) if r[3] == "pending"]:
        key = pending[0][:3]
        tried.append(key)
        results[key] = _oracle(*key)
    assert tried == EXPECTED_TRIES
    final = {r[:3]: r[3] for r in sp.plan(CANDS, results)}
    assert all((st in sp.VALID) == (_oracle(*k) == "valid") for k, st in final.items())
    assert Counter(final.values()) == {"valid": 9, "failed": 4, "valid-by-rule": 14}


# ---------------------------------------------------------------- reading results

def _hand_state():
    attempts = [{"tp": t, "batch": b, "seq": s, "status": _oracle(t, b, s), "seconds": 1.0}
                for t, b, s in EXPECTED_TRIES]
    return {"candidates": CANDS, "attempts": attempts}


def test_optimal_is_the_per_tp_pareto_front():
    opt = [(r["tp"], r["batch"], r["seq"]) for r in sp.optimal(_hand_state())]
    # tp 8: (8, 4096) beats everything; tp 4: (8, 2048) and (4, 4096);
    # tp 2: (8, 1024), (4, 2048), (1, 4096)
    assert opt == [(8, 8, 4096), (4, 8, 2048), (4, 4, 4096),
                   (2, 8, 1024), (2, 4, 2048), (2, 1, 4096)]


def test_grid_and_summary():
    state = _hand_state()
    g = sp.grid(state, 2)
    assert g["batches"] == [1, 4, 8] and g["seqs"] == [1024, 2048, 4096]
    assert g["status"] == [["valid-by-rule", "valid-by-rule", "valid"],
                           ["valid-by-rule", "valid", "failed"],
                           ["valid", "failed", "failed"]]
    with pytest.raises(ParameterError, match="Parameter tp=16"):
        sp.grid(state, 16)
    rows = sp.summary(state)
    assert len(rows) == 27 and set(rows[0]) >= {"tp", "batch", "seq", "status"}
    assert [r["seconds"] for r in rows if r["status"] == "valid-by-rule"] == [None] * 14


def test_model_name(tmp_path):
    assert es.model_name("mistralai/Mistral-7B-v0.1") == "mistralai--Mistral-7B-v0.1"
    local = tmp_path / "checkpoints" / "my-model"
    local.mkdir(parents=True)
    assert es.model_name(str(local) + "/") == "my-model"
    assert es.model_name("./some/where/tiny llama") == "tiny_llama"
    assert es.state_path(tmp_path, "org/name") == tmp_path / "org--name.json"
    with pytest.raises(ParameterError, match="Parameter model="):
        es.model_name("  ")


# ---------------------------------------------------------------- validators

def test_neuron_validator_commands(tmp_path):
    v = at.NeuronValidator("inf2")
    export, load = v.command("mistralai/Mistral-7B-v0.1", 8, 4, 4096, tmp_path)
    out = str(tmp_path / "export")
    assert export == ["optimum-cli", "export", "neuron", "-m", "mistralai/Mistral-7B-v0.1",
                      "--batch_size", "4", "--sequence_length", "4096",
                      "--tensor_parallel_size", "8", "--task", "text-generation", out,
                      "--instance_type", "inf2"]
    assert load == [sys.executable, "-m", "workbook.llm.search", "load-neuron", out]
    assert at.NeuronValidator(load=False).command("m", 2, 1, 1024, tmp_path) == [
        export[:4] + ["m", "--batch_size", "1", "--sequence_length", "1024",
                      "--tensor_parallel_size", "2", "--task", "text-generation", out]]
    assert "compile only" in at.NeuronValidator(load=False).describe()
    (tmp_path / "export").mkdir()
    v.cleanup(tmp_path)
    assert not (tmp_path / "export").exists()
    with pytest.raises(ParameterError, match="Parameter instance_type='trn9'"):
        at.NeuronValidator("trn9")


def test_load_neuron_says_what_is_missing(tmp_path):
    try:  # optimum-neuron is not installed on the dev machine; the message must say what is missing
        import optimum.neuron  # noqa: F401
        pytest.skip("optimum-neuron is installed here")
    except ImportError:
        pass
    p = subprocess.run([PY, "-m", "workbook.llm.search", "load-neuron", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "optimum-neuron" in p.stderr and "Traceback" not in p.stderr


def test_command_and_torch_validators(tmp_path):
    v = at.CommandValidator("{python} -c pass {tp}",
                            ["echo", "{model}", "{batch}x{seq}", "{workdir}"])
    assert v.command("m", 4, 2, 1024, tmp_path) == [[sys.executable, "-c", "pass", "4"],
                                                   ["echo", "m", "2x1024", str(tmp_path)]]
    with pytest.raises(ParameterError, match="Parameter template="):
        at.CommandValidator("echo {nope}")
    t = at.TorchValidator("cpu", 0.05, "bfloat16", 60.0)
    assert t.command("m", 2, 4, 2048, tmp_path) == [
        sys.executable, "-m", "workbook.llm.validate", "--model", "m", "--tp", "2", "--batch", "4",
        "--seq", "2048", "--device", "cpu", "--budget-gb", "0.05", "--dtype", "bfloat16",
        "--timeout", "60.0"]
    # the name and description a state file was written with before: such a file still resumes
    assert t.name == "torch-cpu" and t.describe() == (
        "torch-cpu: tensor-parallel load + one forward on cpu, 0.05 GB per device, bfloat16")


# ---------------------------------------------------------------- tries in their own processes

HUNG = textwrap.dedent("""
    import os, subprocess, sys, time
    tp, b, s, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    print(f"try {tp} {b} {s}", flush=True)
    if (b, s) == (4, 2048):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open(out, "w").write(str(child.pid))
        print("hanging now", flush=True)
        time.sleep(60)
    if (b, s) == (4, 1024):
        print("bad configuration: out of memory", flush=True)
        sys.exit(3)
    if (b, s) == (1, 2048):
        os.kill(os.getpid(), 9)
""")


def test_hang_crash_and_signal_are_recorded_and_the_search_goes_on(tmp_path):
    script, child_file = tmp_path / "try.py", tmp_path / "child.pid"
    script.write_text(HUNG)
    v = at.CommandValidator(f"{{python}} -S {script} {{tp}} {{batch}} {{seq}} {child_file}")
    cands = {"tps": [2], "batches": [4, 1], "seqs": [2048, 1024]}
    t0 = time.monotonic()
    state = es.search("org/hangs", v, cands, tmp_path / "state", timeout_s=1.5, log=_quiet)
    assert time.monotonic() - t0 < 20
    by = {(a["tp"], a["batch"], a["seq"]): a for a in state["attempts"]}
    hung, failed, killed = by[(2, 4, 2048)], by[(2, 4, 1024)], by[(2, 1, 2048)]
    assert hung["status"] == "timeout" and 1.4 < hung["seconds"] < 6
    assert "hanging now" in hung["log_tail"] and "timeout_s=1.5" in hung["detail"]
    assert not _alive(int(child_file.read_text()))  # the hung try's child went with its group
    assert failed["status"] == "failed" and failed["exit_code"] == 3
    assert "bad configuration: out of memory" in failed["log_tail"]
    assert "[failed: step 1 exited with code 3]" in failed["log_tail"]
    assert killed["status"] == "crashed" and "SIGKILL" in killed["detail"]
    assert killed["exit_code"] == -9
    assert by[(2, 1, 1024)]["status"] == "valid"  # after a crash (2, 1, 1024) is still tried
    assert state["complete"]
    assert json.loads((tmp_path / "state" / "org--hangs.json").read_text())["complete"]
    assert Path(hung["log"]).read_text().startswith("$ ")


def test_multi_step_try_needs_every_step(tmp_path):
    v = at.CommandValidator("{python} -S -c 'print(\"export ok\")'",
                            "{python} -S -c 'import sys; sys.exit({tp} != 4)'")
    state = es.search("m", v, {"tps": [4, 2], "batches": [1], "seqs": [1024]}, tmp_path,
                      timeout_s=30, log=_quiet)
    by = {a["tp"]: a for a in state["attempts"]}
    assert by[4]["status"] == "valid" and len(by[4]["steps"]) == 2
    assert by[2]["status"] == "failed" and by[2]["detail"] == "step 2 exited with code 1"
    assert "export ok" in by[2]["log_tail"]


# ---------------------------------------------------------------- the state file

def test_resume_tests_nothing_twice_and_refuses_another_validator(tmp_path):
    v, side = _fake_validator(tmp_path, pause=0)
    lines = []
    first = es.search("org/m", v, CANDS, tmp_path / "s", timeout_s=30, log=lines.append)
    assert [(a["tp"], a["batch"], a["seq"]) for a in first["attempts"]] == EXPECTED_TRIES
    oracle = {k: _oracle(*k) for k in EXPECTED_TRIES}
    assert _statuses(first) == {r[:3]: r[3] for r in sp.plan(CANDS, oracle)}
    again = es.search("org/m", v, CANDS, tmp_path / "s", timeout_s=30, log=lines.append)
    assert side.read_text().count("start") == len(EXPECTED_TRIES)  # nothing ran the second time
    assert again["attempts"] == first["attempts"] and len(again["sessions"]) == 2
    assert again["rules_version"] == sp.RULES_VERSION and again["candidates"] == CANDS
    assert again["seconds_total"] >= first["seconds_total"] > 0
    assert any("resuming" in ln for ln in lines)
    with pytest.raises(WorkbookError, match="validator 'cmd'"):
        es.search("org/m", at.NeuronValidator(), CANDS, tmp_path / "s", timeout_s=30, log=_quiet)


def test_ctrl_c_stops_the_search_unfinished_and_a_rerun_goes_on_from_there(tmp_path):
    """Ctrl-C between tries, or in the middle of one, ends the search with KeyboardInterrupt: the
    state keeps the finished tries, nothing in flight and no completion mark, and the next search
    runs the rest once (it used to swallow the interrupt and call the search complete)."""
    import threading

    v, side = _fake_validator(tmp_path, pause=0, slow="8,1,4096")  # the third try takes 1.5 s
    done = []

    def tried(line):
        done.append(line)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        es.search("org/m", v, CANDS, tmp_path / "s", timeout_s=30, log=_quiet, tried=tried)
    saved = json.loads(es.state_path(tmp_path / "s", "org/m").read_text())
    assert not saved.get("complete") and saved["running"] == [] and len(saved["attempts"]) == 2

    timer = threading.Timer(0.7, os.kill, (os.getpid(), signal.SIGINT))  # during the third try
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            es.search("org/m", v, CANDS, tmp_path / "s", timeout_s=30, log=_quiet)
    finally:
        timer.cancel()
    saved = json.loads(es.state_path(tmp_path / "s", "org/m").read_text())
    assert not saved.get("complete") and saved["running"] == [] and len(saved["attempts"]) == 2

    final = es.search("org/m", v, CANDS, tmp_path / "s", timeout_s=30, log=_quiet)
    assert final["complete"]
    assert [(a["tp"], a["batch"], a["seq"]) for a in final["attempts"]] == EXPECTED_TRIES
    assert side.read_text().count("done") == len(EXPECTED_TRIES)  # every try finished once


def test_one_search_per_state_file_and_stale_temp_files_go(tmp_path):
    v, _ = _fake_validator(tmp_path, pause=0)
    (tmp_path / ".m.json.abc.tmp").write_text('{"trunc')
    with open(tmp_path / ".m.json.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(WorkbookError, match="Another search is running"):
            es.search("m", v, CANDS, tmp_path, timeout_s=30, log=_quiet)
    es.search("m", v, {"tps": [2], "batches": [1], "seqs": [1024]}, tmp_path, timeout_s=30,
              log=_quiet)
    assert not (tmp_path / ".m.json.abc.tmp").exists()


def _interrupted_state(path, key, token, **extra):
    tp, b, s = key
    running = {"tp": tp, "batch": b, "seq": s, "started": "t", "token": token, "pid": 1, **extra}
    write_json_atomic(path, {"model": path.stem, "model_name": path.stem, "validator_name": "cmd",
                             "attempts": [], "running": running, "interruptions": [],
                             "sessions": [], "seconds_total": 1.0})


def test_interrupted_try_is_retried_however_often_and_its_leftovers_killed(tmp_path):
    """A state file as a killed search leaves it (written before the search recorded out-of-memory
    counts, too): the try's leftovers are found by their token and stopped, and the try is run
    again, also after a second kill during it: a kill from outside is not the try's own outcome."""
    v, side = _fake_validator(tmp_path, pause=0)
    cands = {"tps": [2], "batches": [1], "seqs": [2048, 1024]}
    token = uuid.uuid4().hex
    leftover = subprocess.Popen([PY, "-S", "-c", "import time; time.sleep(60)"],
                                env={**os.environ, at.TOKEN_ENV: token}, start_new_session=True)
    try:
        _interrupted_state(tmp_path / "m.json", (2, 1, 2048), token)
        state = es.search("m", v, cands, tmp_path, timeout_s=30, log=_quiet)
        assert leftover.wait(timeout=10) == -signal.SIGKILL  # found by its token and stopped
        assert state["interruptions"][0]["leftover_processes_killed"] == 1
        assert [(a["seq"], a["status"]) for a in state["attempts"]] == [(2048, "valid")]
        assert state["plan"][1]["status"] == "valid-by-rule"
    finally:
        if leftover.poll() is None:
            leftover.kill()
    # the search killed a second time during the same try: run again, not recorded as crashed
    _interrupted_state(tmp_path / "n.json", (2, 1, 2048), uuid.uuid4().hex)
    state = json.loads((tmp_path / "n.json").read_text())
    state["interruptions"] = [{"tp": 2, "batch": 1, "seq": 2048, "started": "t0", "noticed": "t1"}]
    write_json_atomic(tmp_path / "n.json", state)
    before = side.read_text().count("start 2 1 2048")
    state = es.search("n", v, cands, tmp_path, timeout_s=30, log=_quiet)
    assert [(a["seq"], a["status"]) for a in state["attempts"]] == [(2048, "valid")]
    assert side.read_text().count("start 2 1 2048") == before + 1
    assert state["interruptions"][-1]["outcome"] == "tried again"


def test_an_interrupted_try_keeps_its_own_outcome(tmp_path, monkeypatch):
    """What the try itself showed decides it: the record it wrote on finishing (the search was
    killed before saving it), or an out-of-memory kill while it ran; neither is run again."""
    v, side = _fake_validator(tmp_path, pause=0)
    cands = {"tps": [2], "batches": [1], "seqs": [1024]}
    token = uuid.uuid4().hex
    workdir = tmp_path / "f.attempts" / "tp2-b1-s1024"
    rec = at.run_attempt(v, "f", 2, 1, 1024, workdir, 30, token)
    assert rec["status"] == "valid" and at.finished_record(workdir, token) == rec
    assert at.finished_record(workdir, "another token") is None
    _interrupted_state(tmp_path / "f.json", (2, 1, 1024), token)
    state = es.search("f", v, cands, tmp_path, timeout_s=30, log=_quiet)
    assert state["attempts"] == [rec] and side.read_text().count("start") == 1
    assert state["interruptions"][-1]["outcome"] == "recorded as valid"

    monkeypatch.setattr(es, "oom_kills", lambda: 7)
    _interrupted_state(tmp_path / "o.json", (2, 1, 1024), uuid.uuid4().hex, oom_kills=6)
    state = es.search("o", v, cands, tmp_path, timeout_s=30, log=_quiet)
    assert [a["status"] for a in state["attempts"]] == ["crashed"]
    assert "out-of-memory killer killed 1 process(es)" in state["attempts"][0]["detail"]
    assert side.read_text().count("start") == 1  # not run again
    _interrupted_state(tmp_path / "p.json", (2, 1, 1024), uuid.uuid4().hex, oom_kills=7)
    state = es.search("p", v, cands, tmp_path, timeout_s=30, log=_quiet)  # no kill since it started
    assert [a["status"] for a in state["attempts"]] == ["valid"]


def test_oom_kills_reads_a_counter():
    n = at.oom_kills()
    assert n is None or (isinstance(n, int) and n >= 0)


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from workbook.record import write_json_atomic
    p, i = Path(sys.argv[1]), 0
    while True:
        write_json_atomic(p, {"i": i, "pad": ["x" * 200] * 3000})
        i += 1
""")


def test_killed_writers_never_leave_a_truncated_file(tmp_path):
    """Six processes rewrite their file in a loop and are killed at staggered moments; a plain
    (truncate then write) writer leaves a broken file about half the time at each kill, so this
    catches it almost surely."""
    paths = [tmp_path / f"state{i}.json" for i in range(6)]
    procs = [subprocess.Popen([PY, "-c", WRITER, str(p)]) for p in paths]
    t_end = time.monotonic() + 30
    while not all(p.exists() for p in paths) and time.monotonic() < t_end:
        time.sleep(0.05)
    for writer in procs:
        time.sleep(0.137)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    for p in paths:
        data = json.loads(p.read_text())  # a complete document, whenever the kill landed
        assert data["i"] >= 0 and len(data["pad"]) == 3000 and data["pad"][-1] == "x" * 200


# ---------------------------------------------------------------- SIGKILL of the whole search

def _cli(tmp_path, validator_template, state_dir):
    return [PY, "-m", "workbook.llm.search", "run", "--model", "org/fake", "--validator", "cmd",
            "--template", validator_template, "--state-dir", str(state_dir), "--total-cores", "8",
            "--cores-per-device", "2", "--heads", "8", "--max-positions", "8192",
            "--batch-sizes", "1,4,8", "--timeout", "30"]


def _read_state(path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _kill_when(proc, path, ready, limit=30.0):
    """SIGKILL the search once ``ready(state)`` holds (or at once when ``ready`` is None); return
    the state file as it was after the kill."""
    t_end = time.monotonic() + limit
    while ready is not None:
        st = _read_state(path)
        if st is not None and ready(st):
            break
        assert proc.poll() is None, "the search ended before the moment chosen to kill it"
        assert time.monotonic() < t_end
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return _read_state(path)


def test_sigkill_and_resume_lose_nothing_and_repeat_nothing(tmp_path):
    # the uninterrupted reference, in process
    (tmp_path / "ref").mkdir()
    ref_v, _ = _fake_validator(tmp_path / "ref", pause=0)
    reference = es.search("org/fake", ref_v, CANDS, tmp_path / "ref" / "state", timeout_s=30,
                          log=_quiet)

    run = tmp_path / "run"
    run.mkdir()
    v, side = _fake_validator(run, pause=0.3)
    cmd = _cli(tmp_path, shlex.join(v.steps[0]), run / "state")
    path = run / "state" / "org--fake.json"
    assert sp.candidates(8, 2, 8, 8192, [1, 4, 8]) == CANDS

    kills = [
        (0.3, None),  # right after start: before or during the first try
        # during a try, >= 2 done; then during a later try
        (0, lambda st: len(st["attempts"]) >= 2 and st["running"]),
        (0, lambda st: len(st["attempts"]) >= 6 and st["running"]),
    ]
    kept = []
    for wait, ready in kills:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(wait)
        st = _kill_when(proc, path, ready)
        if st is not None:
            kept.extend(st["attempts"])
            if ready is not None:
                assert st["running"]  # really killed in the middle of a try
                # the try sleeps 0.3 s: it must die with the search, not linger until resume
                assert _gone(st["running"][0]["token"], within=0.25)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    final = json.loads(path.read_text())

    assert final["complete"] and len(final["sessions"]) >= 3
    # no finished result lost (same record, same timestamps)
    assert all(a in final["attempts"] for a in kept)
    keys = [(a["tp"], a["batch"], a["seq"]) for a in final["attempts"]]
    assert sorted(keys) == sorted(EXPECTED_TRIES) and len(set(keys)) == len(keys)
    log = side.read_text().split("\n")
    done = Counter(tuple(map(int, ln.split()[1:])) for ln in log if ln.startswith("done"))
    assert done == Counter(EXPECTED_TRIES)  # every try finished exactly once: none repeated
    starts = sum(ln.startswith("start") for ln in log)
    assert len(EXPECTED_TRIES) <= starts <= len(EXPECTED_TRIES) + len(final["interruptions"])
    assert len(final["interruptions"]) >= 2  # the two kills during a try were noticed on resume
    assert _statuses(final) == _statuses(reference)
    assert "optimal: tp=8 batch=8 seq=4096" in p.stdout


def test_two_kills_in_the_same_try_resume_to_the_uninterrupted_answer(tmp_path):
    """The issue's case: the search SIGKILLed twice while (2, 8, 1024) runs. That try is run again
    each time (a kill from outside is not its outcome), so the resumed search ends with the statuses
    and the optimal configurations of a search never killed."""
    (tmp_path / "ref").mkdir()
    ref_v, _ = _fake_validator(tmp_path / "ref", pause=0)
    reference = es.search("org/fake", ref_v, CANDS, tmp_path / "ref" / "state", timeout_s=30,
                          log=_quiet)
    v, side = _fake_validator(tmp_path, pause=0, slow="2,8,1024")
    cmd = _cli(tmp_path, shlex.join(v.steps[0]), tmp_path / "state")
    path = tmp_path / "state" / "org--fake.json"
    for n in (1, 2):
        def inside(st, n=n):  # the slow try runs: started n times by now
            run = (st["running"] or [None])[0]
            return (run is not None and (run["tp"], run["batch"], run["seq"]) == (2, 8, 1024)
                    and side.exists() and side.read_text().count("start 2 8 1024") == n)
        search = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        st = _kill_when(search, path, inside)
        assert _gone(st["running"][0]["token"])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    final = json.loads(path.read_text())
    assert [i["outcome"] for i in final["interruptions"]] == ["tried again", "tried again"]
    assert {(i["tp"], i["batch"], i["seq"]) for i in final["interruptions"]} == {(2, 8, 1024)}
    assert _statuses(final) == _statuses(reference) and _statuses(final)[(2, 8, 1024)] == "valid"
    assert sp.optimal(final) == sp.optimal(reference)
    assert side.read_text().count("done 2 8 1024") == 1


TREE = textwrap.dedent("""
    import subprocess, sys, time
    sleep = [sys.executable, "-S", "-c", "import time; time.sleep(60)"]
    sibling = subprocess.Popen(sleep)  # same process group, no parent-death signal
    apart = subprocess.Popen(sleep, start_new_session=True)  # its own session, as torchrun's ranks
    open(sys.argv[1], "w").write(f"{sibling.pid} {apart.pid}")
    time.sleep(60)
""")


def test_no_process_of_a_try_outlives_a_killed_search(tmp_path):
    """The try's direct child, a child in its group and one in a session of its own all die within a
    moment of the search's SIGKILL (nobody resumes it)."""
    script, pids = tmp_path / "tree.py", tmp_path / "pids.txt"
    script.write_text(TREE)
    cmd = _cli(tmp_path, f"{{python}} -S {script} {pids}", tmp_path / "state")
    search = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    st = _kill_when(search, tmp_path / "state" / "org--fake.json",
                    lambda st: st["running"] and pids.exists() and pids.read_text())
    token = st["running"][0]["token"]
    assert _gone(token, within=5)
    assert not any(_still_sleeping(int(p)) for p in pids.read_text().split())


def _still_sleeping(pid):
    """The tree's sleeper still runs under ``pid`` (not another process given its number since)."""
    try:
        return _alive(pid) and b"time.sleep(60)" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _cpu_cli(model, state_dir, budget_gb):
    return [PY, "-m", "workbook.llm.search", "run", "--model", model, "--validator", "cpu",
            "--budget-gb", str(budget_gb), "--state-dir", str(state_dir), "--total-cores", "2",
            "--cores-per-device", "1", "--heads", "8", "--max-positions", "4096",
            "--batch-sizes", "1", "--min-seq", "2048", "--timeout", "300"]


def test_command_line_offers_the_cpu_validator(tiny_lm, tmp_path):
    """``python -m workbook.llm.search --validator cpu`` tries with the notebook's cpu validator
    (here refused by its memory rule, before any rank starts: the notebook run loads for real)."""
    p = subprocess.run(_cpu_cli(tiny_lm, tmp_path, 1e-6), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "statuses: failed 1" in p.stdout
    final = json.loads(es.state_path(tmp_path, tiny_lm).read_text())
    assert final["validator"] == ("torch-cpu: tensor-parallel load + one forward on cpu, 1e-06 GB "
                                  "per device, float32")
    (a,) = final["attempts"]
    assert a["exit_code"] == 3 and "-m workbook.llm.validate" in a["steps"][0]
    assert any(ln.startswith("refused:") for ln in a["log_tail"])


def test_a_killed_search_leaves_no_rank_of_the_cpu_validator(tiny_lm, tmp_path):
    """The chain search -> ``python -m workbook.llm.validate`` -> torchrun -> ranks (each rank in a
    session of its own): killed while the ranks run, nothing of the try is left."""
    search = subprocess.Popen(_cpu_cli(tiny_lm, tmp_path, 0.05), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    def ranks_run(st):  # validate, torchrun and two ranks
        return st["running"] and len(_procs_with_token(st["running"][0]["token"])) >= 4

    st = _kill_when(search, es.state_path(tmp_path, tiny_lm), ranks_run, limit=120)
    assert _gone(st["running"][0]["token"])


@pytest.mark.parametrize("args, sentence", [
    (["--validator", "cuda", "--budget-gb", "1"], "Parameter --validator='cuda' is not allowed"),
    (["--validator", "cpu"], "Parameter --budget-gb=None is not allowed: a positive number of GB "
                             "per device with the cpu validator."),
    (["--validator", "cmd"], "Parameter --template=None is not allowed"),
    (["--validator", "cpu", "--budget-gb", "1", "--total-cores", "4096"],
     "Parameter --total-cores=4096 is not allowed: at most the"),
    (["--validator", "cpu", "--budget-gb", "1", "--timeout", "0"], "Parameter --timeout=0.0"),
])
def test_command_line_refuses_bad_arguments_in_one_sentence(tmp_path, args, sentence):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    base = {"--model": "m", "--state-dir": str(tmp_path), "--total-cores": "2",
            "--cores-per-device": "1", "--heads": "4096", "--max-positions": "4096",
            "--timeout": "5"}
    for k, val in zip(args[::2], args[1::2]):
        base[k] = val
    argv = [x for kv in base.items() for x in kv]
    p = subprocess.run([PY, "-m", "workbook.llm.search", "run"] + argv, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and sentence in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert not list(tmp_path.iterdir())  # refused before anything started


# ---- the notebook's first cell (workbook.experiments.export_search.configure) --------------------
@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """The tiny Mistral: 8 attention heads, 4096 positions."""
    from workbook.models import mistral

    return str(mistral.create_tiny(tmp_path_factory.mktemp("lm") / "m", seed=0))


def _es_params(model, state_dir, **kw):
    """The notebook's first cell: its parameters checked by the spec (``SPEC.take`` does this)."""
    from workbook.specs.export_search import SPEC

    return SPEC.check(dict(model=model, validator="cpu", batch_sizes=[1], min_seq=2048,
                           state_dir=str(state_dir)) | kw)


def _es_refusal(model, state_dir, **kw) -> str:
    from workbook.experiments.export_search import configure

    with pytest.raises(ParameterError) as e:
        configure(_es_params(model, state_dir, **kw))
    msg = str(e.value)
    assert msg.endswith(".") and "\n" not in msg
    return msg


CPUS = proc.usable_cpus()


NOT_ALLOWED = "Parameter {} is not allowed: {}."


@pytest.mark.parametrize("kw, sentence", [
    (dict(dtype="float64"), NOT_ALLOWED.format(
        "dtype='float64'", "one of float32, bfloat16, float16")),
    (dict(timeout_s=0), NOT_ALLOWED.format(
        "timeout_s=0", "a positive number of seconds per attempt")),
    (dict(total_cores=1), NOT_ALLOWED.format(
        "total_cores=1", "an integer of at least 2 (tensor parallelism needs two cores)")),
    (dict(cores_per_device=0), NOT_ALLOWED.format(
        "cores_per_device=0", "a positive integer (NeuronCores per device, 2 on trn1/inf2)")),
    (dict(min_seq=1000), NOT_ALLOWED.format("min_seq=1000", "a positive power of two")),
    (dict(min_seq=8192), NOT_ALLOWED.format(
        "min_seq=8192", "a power of two below the model's 4096 positions")),
    (dict(total_cores=2, cores_per_device=3), NOT_ALLOWED.format(
        "cores_per_device=3", "at most total_cores=2")),
    pytest.param(dict(total_cores=8), NOT_ALLOWED.format(
        "total_cores=8", f"at most the {CPUS} CPU cores this process may use, for the cpu "
        "validator (one process per rank)"),
        marks=pytest.mark.skipif(CPUS >= 8, reason="tp 8 fits this machine's CPU cores"),
        id="more-than-cpus"),
])
def test_configure_refuses_with_one_sentence(tiny_lm, tmp_path, kw, sentence):
    assert _es_refusal(tiny_lm, tmp_path / "state", **kw) == sentence


def test_configure_names_total_cores_when_no_tp_divides_the_heads(tmp_path):
    from workbook.models import mistral

    odd = str(mistral.create_tiny(tmp_path / "odd", seed=0, num_attention_heads=3,
                                  num_key_value_heads=1, hidden_size=48))
    assert _es_refusal(odd, tmp_path / "state", total_cores=2) == NOT_ALLOWED.format(
        "total_cores=2", "a count that allows a tensor-parallel size (at least 2, a multiple of "
        "cores_per_device=1) dividing the model's 3 attention heads")


def test_state_dir_that_is_a_file_is_refused(tiny_lm, tmp_path):
    f = tmp_path / "state.json"
    f.write_text("{}")
    assert _es_refusal(tiny_lm, f) == NOT_ALLOWED.format(
        f"state_dir={str(f)!r}", "a folder, or empty for the default (it is a file)")


def test_state_made_with_other_settings_is_refused_in_the_first_cell(tiny_lm, tmp_path):
    """A resumed search trusts every result in the file: results under another memory budget are not
    resumed."""
    from workbook.experiments import export_search as exp

    state = tmp_path / "state"
    cfg = exp.configure(_es_params(tiny_lm, state, memory_budget_gb=0.05))
    v = exp.validator(cfg)
    path = es.state_path(state, cfg.model)
    state.mkdir()
    write_json_atomic(path, {"model": cfg.model, "model_name": es.model_name(cfg.model),
                             "validator_name": v.name, "validator": v.describe(),
                             "attempts": [{"tp": 2, "batch": 1, "seq": 2048, "status": "valid"}]})
    exp.configure(_es_params(tiny_lm, state, memory_budget_gb=0.05))  # the same settings resume
    msg = _es_refusal(tiny_lm, state, memory_budget_gb=0.01)
    assert msg.startswith(f"Parameter state_dir={str(state)!r} is not allowed: a folder without "
                          "results made with other settings:")
    assert "0.05 GB per device" in msg and "0.01 GB per device" in msg
    msg = _es_refusal(tiny_lm, state, dtype="bfloat16")
    assert "float32" in msg and "bfloat16" in msg
    # and the search itself refuses it too
    with pytest.raises(ParameterError, match="made with other settings"):
        es.search(cfg.model, at.TorchValidator("cpu", 0.02, "float32", 5),
                  {"tps": [2], "batches": [1], "seqs": [2048]}, state, 5, log=_quiet)
