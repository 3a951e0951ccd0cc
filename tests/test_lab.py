"""`make lab`: JupyterLab starts (as root too, which is how containers and cloud notebooks run it)
and offers the workbook's kernel, the one every notebook declares."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from workbook.params import notebook_files
from workbook.paths import repo_root

ROOT = repo_root()
NOTEBOOKS = notebook_files()
# -o STAMP: make treats set-up as done, so no test ever reinstalls
STAMP = ".venv/.workbook-installed"


def _make_lab_line(lab_args: str = "", env=None) -> str:
    """The command `make lab` runs, as make prints it (-n: nothing runs)."""
    r = subprocess.run(["make", "-s", "-n", "-o", STAMP, "lab", f"LAB_ARGS={lab_args}"], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stdout
    return lines[0]


def test_every_notebook_declares_the_workbook_kernel():
    assert NOTEBOOKS
    for nb in NOTEBOOKS:
        spec = json.loads(nb.read_text())["metadata"].get("kernelspec", {})
        assert spec.get("name") == "workbook", f"{nb.name} declares kernel {spec.get('name')!r}"


def test_workbook_kernel_is_installed_in_this_environment():
    """`make setup` installs it with --sys-prefix: Jupyter in this environment finds it, and it
    starts this environment's python (not whichever python comes first on PATH)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("workbook")
    kernels = Path(sys.prefix).resolve() / "share" / "jupyter"
    assert Path(spec.resource_dir).resolve().is_relative_to(kernels)
    r = subprocess.run([spec.argv[0], "-c", "import sys, workbook; print(sys.prefix)"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr  # its python imports the workbook package
    assert Path(r.stdout.strip()).resolve() == Path(sys.prefix).resolve()


def test_allow_root_only_for_root(tmp_path):
    """Jupyter refuses to run as root without --allow-root; a user gets the command without it."""
    line = _make_lab_line()
    assert "--notebook-dir=notebooks" in line
    assert "--MultiKernelManager.default_kernel_name=workbook" in line
    assert ("--allow-root" in line) == (os.geteuid() == 0)
    fake = tmp_path / "bin"
    fake.mkdir()
    for uid in ("0", "1000"):
        (fake / "id").write_text(f"#!/bin/sh\necho {uid}\n")
        (fake / "id").chmod(0o755)
        env = dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
        assert ("--allow-root" in _make_lab_line(env=env)) == (uid == "0"), uid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "jupyter").exists(),
                    reason="make lab runs .venv/bin/jupyter")
def test_make_lab_serves_the_workbook_kernel(tmp_path):
    """`make lab` itself (set-up taken as done), on a free port with a known token: the server
    answers and offers the workbook kernel as the default. As root this is the case that used to
    exit at once."""
    port, token = _free_port(), os.urandom(8).hex()
    args = f"--no-browser --port={port} --ServerApp.port_retries=0 --IdentityProvider.token={token}"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log = tmp_path / "lab.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["make", "-o", STAMP, "lab", f"LAB_ARGS={args}"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        got, deadline = None, time.monotonic() + 60
        while got is None and time.monotonic() < deadline:
            assert proc.poll() is None, (f"make lab exited with {proc.returncode}:\n"
                                         f"{log.read_text()[-3000:]}")
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/kernelspecs",
                                         headers={"Authorization": f"token {token}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    got = json.load(resp)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        assert got is not None, f"no answer on port {port} in 60 s:\n{log.read_text()[-3000:]}"
        assert "workbook" in got["kernelspecs"] and got["default"] == "workbook", got.get("default")
        assert got["kernelspecs"]["workbook"]["spec"]["display_name"] == "Python (workbook)"
    finally:
        with contextlib.suppress(ProcessLookupError):
            # make and the jupyter it started: their own process group
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
