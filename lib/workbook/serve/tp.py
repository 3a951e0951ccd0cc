"""``workbook serve --tp-degree N``: N tensor-parallel ranks under torchrun, rank 0 serving HTTP.

The command checks its options, then starts ``python -m torch.distributed.run --standalone
--nproc-per-node N -m workbook.serve.tp ARGS`` in a session of its own and stays as its supervisor:
Ctrl-C or SIGTERM is passed to rank 0 alone (its pid is in a file the supervisor names), which
drains like a single-process server; torchrun itself would kill the ranks and print a traceback.
Before rank 0 is up, a signal stops torchrun instead. Every rank loads its shard of the model
(:func:`workbook.llm.decode.load`, the plans of :mod:`workbook.llm.shard`). Rank 0 runs the server
of :mod:`workbook.serve.cli`; before each batch it broadcasts the batch (token ids, lengths,
images) over a host (gloo) group, and every other rank runs the same batch with it, step for step.
When rank 0 has drained it broadcasts the end, and every rank leaves the group. The other ranks
ignore SIGINT and SIGTERM (they stop when rank 0 says so, or with torchrun through the parent-death
signal).
"""
from __future__ import annotations

import os
import signal
import sys

from workbook.serve.engine import Request


LEADER_PID = "WORKBOOK_SERVE_LEADER_PID"  # the file rank 0 writes its pid to


def supervise(tp_degree: int, argv: list[str]) -> int:
    """Run ``tp_degree`` ranks of this module under torchrun; pass Ctrl-C/SIGTERM to rank 0;
    torchrun's exit code."""
    import subprocess
    import tempfile
    from pathlib import Path

    from workbook import proc

    pidfile = Path(tempfile.mkdtemp(prefix="workbook-serve-")) / "leader.pid"
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          f"--nproc-per-node={tp_degree}", "-m", "workbook.serve.tp", *argv],
                         env={**os.environ, LEADER_PID: str(pidfile)}, start_new_session=True,
                         preexec_fn=proc.die_with_parent())

    def forward(_sig, _frame):
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)  # rank 0 drains; the rest follow
        except (OSError, ValueError):
            p.terminate()  # rank 0 is not serving yet: torchrun stops the ranks

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    try:
        return p.wait()
    finally:
        if p.poll() is None:
            proc.kill_group(p)
        pidfile.unlink(missing_ok=True)
        pidfile.parent.rmdir()


def _wire(reqs: list[Request]) -> list[tuple]:
    return [(r.prompt_ids, r.max_tokens, r.image, r.prefix_tokens) for r in reqs]


class Leader:
    """Rank 0's engine: each batch is announced to the other ranks, then run."""

    def __init__(self, engine, group):
        self.engine, self.group = engine, group

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def run_batch(self, reqs: list[Request]) -> None:
        import torch.distributed as dist

        dist.broadcast_object_list([_wire(reqs)], src=0, group=self.group)
        self.engine.run_batch(reqs)

    def warm_up(self, steps: int = 3) -> float:
        return self.engine.warm_up(steps, run=self.run_batch)

    def finish(self) -> None:
        import torch.distributed as dist

        dist.broadcast_object_list([None], src=0, group=self.group)


def follow(engine, group) -> int:
    """A rank other than 0: run each batch rank 0 announces, until it announces the end."""
    import torch.distributed as dist

    batches = 0
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0, group=group)
        if box[0] is None:
            return batches
        engine.run_batch([Request(ids, n, emit=lambda *_: None, image=img, prefix_tokens=p)
                          for ids, n, img, p in box[0]])
        batches += 1


def main(argv=None) -> int:
    """One rank (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)."""
    import torch.distributed as dist

    from workbook.llm.decode import die_with_torchrun
    from workbook.serve import cli

    die_with_torchrun()
    argv = sys.argv[1:] if argv is None else argv
    args = cli.parser().parse_args(argv)
    rank = int(os.environ["RANK"])
    cfg = cli.engine_config(args)
    device, group = _start(cfg.device)
    try:
        if rank == 0:
            if os.environ.get(LEADER_PID):
                from pathlib import Path

                Path(os.environ[LEADER_PID]).write_text(str(os.getpid()))
            return cli.serve(args, cfg, wrap=lambda engine: Leader(engine, group), device=device)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        from workbook.serve.engine import Engine

        engine = Engine(cfg, log=lambda _m: None, device=device)
        follow(engine, group)
        return 0
    finally:
        dist.destroy_process_group()


def _start(kind: str):
    """This rank's device, and the host group batches are announced over."""
    import torch
    import torch.distributed as dist

    if kind != "cuda":
        dist.init_process_group("gloo")
        return torch.device("cpu"), dist.group.WORLD
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    device = torch.device("cuda", local)
    dist.init_process_group("nccl", device_id=device)
    return device, dist.new_group(backend="gloo")


if __name__ == "__main__":
    sys.exit(main())
