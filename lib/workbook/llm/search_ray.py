"""The export search's tries as Ray tasks, so a search spreads over the devices of several machines.

The search itself (its plan, its pruning rules, its atomic and resumable ``<model>.json``) stays in
the driver (:func:`workbook.llm.search.search`); only the tries move. Each try is a Ray task that
asks for the devices its tensor-parallel size takes (``num_gpus`` for the cuda validator, the
``neuron_cores`` resource for neuron, CPUs for the others; Ray sets ``CUDA_VISIBLE_DEVICES`` /
``NEURON_RT_VISIBLE_CORES`` for it), runs the try on its node in a folder of that node's, and
returns the try's record and log, which the driver keeps in the attempt's folder as a local try
would. Like the sweep's tasks (:mod:`workbook.sweep.ray_exec`), the code travels through Ray's
object store, and so does the model when it is a local folder, so the nodes need no shared
filesystem. A try whose worker dies is retried by Ray; a try cut short by the search being
stopped is cancelled and tried again on resume.
"""
from __future__ import annotations

import socket
from pathlib import Path

from workbook.sweep import ray_exec


def resources(validator_name: str, tp: int) -> dict:
    """What one try at tensor-parallel size ``tp`` asks Ray for."""
    if validator_name == "cuda":
        return {"num_gpus": tp, "num_cpus": 1}
    if validator_name == "neuron":
        return {"num_cpus": 1, "resources": {"neuron_cores": tp}}
    return {"num_cpus": tp if validator_name == "cpu" else 1}


class RayDispatch:
    """Tries on the cluster at ``address`` (see :func:`workbook.sweep.ray_exec.connect`),
    ``parallel`` at a time (0: as many as the cluster's CPUs, GPUs or NeuronCores fit)."""

    def __init__(self, address: str | None, parallel: int = 0, log=print):
        from workbook.paths import repo_root

        self.ray = ray_exec.connect(address, log=log)
        self.parallel = parallel or self._capacity()
        self._code = ray_exec.pack(repo_root())
        self._code_ref = self.ray.put(self._code[1])
        self._models: dict[str, tuple[str, object]] = {}

    def check(self, validator_name: str, tps: list[int]) -> None:
        """One sentence when no node of the cluster can run the largest try."""
        from workbook.errors import bad_param

        want = resources(validator_name, max(tps))
        need = {"CPU": want["num_cpus"], "GPU": want.get("num_gpus", 0),
                **want.get("resources", {})}
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        if not any(all(n.get(k, 0) >= v for k, v in need.items()) for n in nodes):
            have = "; ".join(", ".join(f"{int(n.get(k, 0))} {k}" for k in need) for n in nodes)
            raise bad_param("total_cores", max(tps), f"a tensor-parallel size one node of the "
                            f"cluster can run: a try at tp={max(tps)} asks for "
                            + ", ".join(f"{v} {k}" for k, v in need.items())
                            + f"; the nodes have {have or 'nothing'}")

    def _capacity(self) -> int:
        total = self.ray.cluster_resources()
        return max(int(max(total.get("GPU", 0), total.get("neuron_cores", 0),
                           total.get("CPU", 1))), 1)

    def _model(self, model: str):
        """(digest, object ref) of a local model folder, shipped once; (None, None) for a hub id."""
        if not Path(model).is_dir():
            return None, None
        if model not in self._models:
            digest, blob = ray_exec.pack(Path(model))
            self._models[model] = (digest, self.ray.put(blob))
        return self._models[model]

    def submit(self, validator, model, tp, batch, seq, workdir, timeout_s, token):
        task = self.ray.remote(_try).options(**resources(validator.name, tp),
                                             max_retries=ray_exec.RETRIES, retry_exceptions=False)
        digest, ref = self._model(model)
        return task.remote(validator, model, digest, ref, self._code[0], self._code_ref, tp, batch,
                           seq, timeout_s, token)

    def wait(self, handles):
        done, _ = self.ray.wait(handles, num_returns=1)
        return done

    def result(self, handle, workdir: Path) -> dict:
        """The try's record, its log written to ``workdir`` as a local try would leave it; a task
        Ray gave up on (its retries spent) is a crashed try saying so."""
        from workbook.llm.attempts import LOG_NAME
        from workbook.provenance import now_iso

        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / LOG_NAME
        try:
            rec, log = self.ray.get(handle)
        except self.ray.exceptions.RayError as e:
            why = f"the Ray task of this try failed: {str(e).strip().splitlines()[0][:300]}"
            log_path.write_text(why + "\n")
            return {"status": "crashed", "detail": why, "exit_code": None, "seconds": 0.0,
                    "finished": now_iso(), "log": str(log_path), "log_tail": [why]}
        log_path.write_bytes(log)
        return {**rec, "log": str(log_path)}

    def cancel(self, handles):
        for h in handles:
            self.ray.cancel(h, force=True)

    def close(self):
        ray_exec.disconnect(self.ray)


def _try(validator, model, model_digest, model_ref, code_digest, code, tp, batch, seq, timeout_s,
         token):
    """On the node: the try, in a folder of this node's; (its record, its log's bytes)."""
    import os

    from workbook.llm.attempts import LOG_NAME, run_attempt

    tree = ray_exec._unpacked(code_digest, code)
    if (tree / "lib" / "workbook").is_dir():  # the driver's lib, in the try's processes too
        os.environ["PYTHONPATH"] = str(tree / "lib")
    if model_digest:
        model = str(ray_exec._unpacked(model_digest, model_ref))
    workdir = ray_exec.scratch_dir(f"attempts/{token}")
    rec = run_attempt(validator, model, tp, batch, seq, workdir, timeout_s, token)
    rec["host"] = socket.gethostname()
    return rec, (workdir / LOG_NAME).read_bytes()
