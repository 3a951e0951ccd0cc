"""workbook.proc: a child's exit code, its logs and their tail, a timeout that takes its whole
process group (grandchildren too), a grace period, the parent-death signal, and the usable-CPU
count."""
import os
import signal
import subprocess
import sys
import time

from workbook import proc


def _gone(pid: int, wait: float = 10.0) -> bool:
    """Whether ``pid`` has exited (a zombie waiting to be reaped counts as gone)."""
    t0 = time.time()
    while time.time() - t0 < wait:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.05)
    return False


def _wait_for(path, wait: float = 10.0) -> str:
    t0 = time.time()
    while time.time() - t0 < wait:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} was never written")


def test_exit_code_and_logs(tmp_path):
    log, err = tmp_path / "out.log", tmp_path / "err.log"
    r = proc.run(["sh", "-c", "echo out; echo err >&2; exit 3"], log=log, stderr_log=err,
                 timeout_s=30)
    assert (r.returncode, r.timed_out) == (3, False) and r.seconds >= 0
    assert log.read_text() == "out\n" and err.read_text() == "err\n"
    both = tmp_path / "both.log"
    assert proc.run(["sh", "-c", "echo a; echo b >&2"], log=both, timeout_s=30).returncode == 0
    assert sorted(both.read_text().split()) == ["a", "b"]  # no stderr_log: stderr goes to the log
    assert proc.run(["true"], timeout_s=30).returncode == 0  # no log at all


def test_timeout_kills_the_whole_group_grandchild_included(tmp_path):
    pid_file = tmp_path / "grandchild"
    t0 = time.time()
    r = proc.run(["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], timeout_s=0.5)
    assert r.returncode is None and r.timed_out and time.time() - t0 < 10
    assert _gone(int(_wait_for(pid_file)))
    # no time left: not started
    assert proc.run(["true"], timeout_s=0) == proc.Result(None, True, 0.0)


def test_grace_lets_the_child_finish_on_sigterm(tmp_path):
    log = tmp_path / "log"
    script = "trap 'echo bye; exit 0' TERM; echo up; while :; do sleep 0.05; done"
    r = proc.run(["sh", "-c", script], log=log, timeout_s=0.5, grace_s=5)
    assert r.timed_out and log.read_text().startswith("up\n") and "bye\n" in log.read_text()


def test_the_child_dies_with_a_sigkilled_parent(tmp_path):
    """The child runs in its own session, so only the parent-death signal takes it down."""
    pid_file = tmp_path / "child"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = ("import sys; from workbook import proc; "
              f"proc.run([sys.executable, '-c', {child!r}], timeout_s=60)")
    p = subprocess.Popen([sys.executable, "-c", parent])
    try:
        pid = int(_wait_for(pid_file, 30))
        assert not _gone(pid, 0.2)
        p.kill()
        p.wait(timeout=10)
        assert _gone(pid), "the child outlived its SIGKILLed parent"
    finally:
        p.kill()
        if pid_file.exists() and pid_file.read_text().strip():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_tail_reads_the_first_log_with_lines(tmp_path):
    empty, log = tmp_path / "empty", tmp_path / "log"
    empty.write_text("\n\n")
    log.write_text("".join(f"line {i}\n" for i in range(30)) + "x" * 1000 + "\n")
    lines = proc.tail(tmp_path / "missing", empty, log, n=3)
    assert lines == ["line 28", "line 29", "x" * proc.TAIL_CHARS]
    assert len(proc.tail(log)) == proc.TAIL_LINES
    assert proc.tail(empty) == [] and proc.tail_text(empty) == "    (no output)"
    assert proc.tail_text(log, n=2, indent="> ").splitlines() == ["> line 29", "> " + "x" * 400]


def test_usable_cpus(monkeypatch):
    n = proc.usable_cpus()
    assert n == len(os.sched_getaffinity(0)) and n >= 1
    monkeypatch.delattr(os, "sched_getaffinity")
    assert proc.usable_cpus() == (os.cpu_count() or 1)


def test_a_child_killed_by_a_signal():
    assert proc.run(["sh", "-c", "kill -9 $$"], timeout_s=30).returncode == -signal.SIGKILL


def test_relay_gets_the_childs_progress_lines_while_it_runs(tmp_path):
    """The child waits for a file that only the relay of its first line creates: were lines relayed
    after its exit only, it would run into the timeout."""
    log, flag = tmp_path / "child.log", tmp_path / "seen"
    got = []

    def relay(line):
        got.append(line)
        flag.touch()

    script = (f"echo '[child] started'; echo 'not progress'; "
              f"while [ ! -e {flag} ]; do sleep 0.05; done; echo '[child] done'")
    r = proc.run(["sh", "-c", script], log=log, timeout_s=30, relay=relay)
    assert (r.returncode, r.timed_out) == (0, False)
    assert got == ["[child] started", "[child] done"]  # the last line too, read after the exit
