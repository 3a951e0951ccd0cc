"""``workbook serve``: load a Mistral (the tiny seeded one by default) and serve it over HTTP.

    workbook serve [--port N] [--host ADDR] [--model DIR|mistral-7b-shape] [--device cpu|cuda]
                   [--dtype ...] [--max-batch N] [--max-queue N] [--context N] [--compile]
                   [--compile-prefill]
                   [--tp-degree N [--tp-mechanism local_shards|parallelize_module]]
                   [--vision-tower NAME --vision-variants 384:hf_bicubic,384:gather4 ...]

Bound to 127.0.0.1 unless ``--host`` says otherwise. Every option is checked before anything is
loaded; the model is loaded and every batch size warmed up (compiled, with ``--compile``) before
the port answers, and the line ``serving http://HOST:PORT`` (also written to ``--ready-file``)
says it is up. Ctrl-C or SIGTERM stops taking connections, lets the requests in flight finish
(at most ``--drain-s`` seconds), stops the engine and exits 0.
"""
from __future__ import annotations

import argparse
import socket
import sys
from contextlib import asynccontextmanager, contextmanager

from workbook.errors import WorkbookError, bad_param


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="workbook serve",
        description="Serve a Mistral over HTTP: /generate, OpenAI-compatible /v1/completions and "
                    "/v1/chat/completions (streamed as server-sent events), /v1/models, /health.")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default "
                    "8000)")
    ap.add_argument("--model", default="", help="checkpoint folder, or mistral-7b-shape (config "
                    "only, seeded random weights); default: the tiny seeded Mistral")
    ap.add_argument("--served-name", default="", help="the model name clients send (default: "
                    "the folder's name)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="auto: cuda when torch sees a GPU, else cpu")
    ap.add_argument("--dtype", default="", choices=("", "float32", "float16", "bfloat16"),
                    help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--max-batch", type=int, default=8, help="requests decoded together (static "
                    "batching; default 8)")
    ap.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond the batch "
                    "before 503 (default 64)")
    ap.add_argument("--context", type=int, default=512, help="positions per sequence: image "
                    "prefix + prompt + new tokens (default 512)")
    ap.add_argument("--compile", action="store_true", help="cuda: compile the decode step into "
                    "CUDA graphs (one per batch size, at start-up)")
    ap.add_argument("--compile-prefill", action="store_true", help="compile the prefill too "
                    "(torch.compile, dynamic shapes: one graph for any prompt length; compiled "
                    "at start-up)")
    ap.add_argument("--vision-tower", default="", help="a SigLIP tower (e.g. SigLIP-Tiny, "
                    "ViT-SO400M-14-SigLIP-384) for image prefixes; default none")
    ap.add_argument("--vision-depth", type=int, default=0, help="keep only this many tower "
                    "blocks (0: all)")
    ap.add_argument("--vision-variants", default="", help="SIZE:INTERP,... served as model names "
                    "NAME:INTERP@SIZE (e.g. 384:hf_bicubic,384:gather4)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the image projection and images")
    ap.add_argument("--tp-degree", type=int, default=1, help="tensor-parallel ranks under "
                    "torchrun, one GPU (or CPU process) each, rank 0 serving HTTP (default 1)")
    ap.add_argument("--tp-mechanism", default="local_shards",
                    choices=("local_shards", "parallelize_module"),
                    help="how the ranks split the model (default local_shards)")
    ap.add_argument("--drain-s", type=float, default=30, help="on Ctrl-C/SIGTERM, seconds to let "
                    "requests in flight finish (default 30)")
    ap.add_argument("--ready-file", default="", help="write the URL here once serving")
    ap.add_argument("--access-log", action="store_true", help="log every request")
    return ap


def variants(text: str) -> list[tuple[int, str]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        size, _, interp = item.partition(":")
        if not size.isdigit() or not interp:
            raise bad_param("vision-variants", text, "SIZE:INTERP pairs separated by commas, "
                            "e.g. 384:hf_bicubic,384:gather4")
        out.append((int(size), interp))
    return out


def _check(args) -> None:
    if not 0 <= args.port <= 65535:
        raise bad_param("port", args.port, "0 (any free port) to 65535")
    if args.max_queue < 0:
        raise bad_param("max-queue", args.max_queue, "0 or more")
    if args.drain_s < 0:
        raise bad_param("drain-s", args.drain_s, "0 or more seconds")
    if args.vision_variants and not args.vision_tower:
        raise bad_param("vision-variants", args.vision_variants, "empty unless --vision-tower "
                        "names a tower")
    if args.vision_tower:
        from workbook.interp import IMPLEMENTATIONS

        for size, interp in variants(args.vision_variants):
            if interp not in IMPLEMENTATIONS:
                raise bad_param("vision-variants", f"{size}:{interp}",
                                "INTERP one of " + ", ".join(IMPLEMENTATIONS))


def engine_config(args):
    from workbook.models.mistral import SHAPES, load_config, workbook_model
    from workbook.serve.engine import EngineConfig, check

    device = args.device
    if device == "auto":
        from workbook.targets import cuda_available

        device = "cuda" if cuda_available() else "cpu"
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    model = args.model
    if not model or model in SHAPES:
        model, _ = workbook_model(model)
    cfg = EngineConfig(model=model, dtype=dtype, device=device, max_batch=args.max_batch,
                       context=args.context, compile=args.compile,
                       compile_prefill=args.compile_prefill,
                       vision_tower=args.vision_tower, vision_depth=args.vision_depth,
                       seed=args.seed, tp_degree=args.tp_degree, tp_mechanism=args.tp_mechanism)
    check(cfg)
    if cfg.tp_degree > 1:
        from workbook.llm import shard

        ok = shard.degrees(load_config(model), cfg.tp_mechanism)
        if cfg.tp_degree not in ok:
            raise bad_param("tp-degree", cfg.tp_degree, f"a degree {cfg.tp_mechanism} can split "
                            f"this model over: {', '.join(map(str, ok))}")
        if device == "cuda":
            import torch

            if torch.cuda.device_count() < cfg.tp_degree:
                raise bad_param("tp-degree", cfg.tp_degree, f"at most the "
                                f"{torch.cuda.device_count()} GPUs torch sees (one rank a GPU)")
    return cfg


def build(args, cfg=None, log=print, wrap=None, device=None):
    """Engine (loaded, warmed up), batcher and service for ``args``; ``wrap`` puts the engine
    behind another (rank 0 of a tensor-parallel group), ``device`` is this rank's."""
    from pathlib import Path

    from workbook.serve.batcher import Batcher
    from workbook.serve.engine import Engine
    from workbook.serve.protocol import Service

    cfg = cfg or engine_config(args)
    log(f"loading {cfg.model} ({cfg.dtype} on {cfg.device}"
        + (f", {cfg.tp_degree} tensor-parallel ranks" if cfg.tp_degree > 1 else "") + ")")
    engine = Engine(cfg, log=log, device=device)
    if wrap is not None:
        engine = wrap(engine)
    vs = variants(args.vision_variants)
    for size, interp in vs:
        engine.vision.check(size, interp, name="vision-variants")
    log(f"loaded in {engine.load_s:.1f} s; warming up batch sizes up to {cfg.max_batch}"
        + {(True, False): " (compiling the decode step)",
           (True, True): " (compiling the decode step and the prefill)",
           (False, True): " (compiling the prefill)"}.get((cfg.compile, cfg.compile_prefill), ""))
    batcher = Batcher(engine, args.max_queue, log=log, warm_up=engine.warm_up)
    log(f"warm-up took {batcher.wait_ready():.1f} s (on the engine's thread, which serves)")
    served = args.served_name or Path(cfg.model).name
    return Service(engine, batcher, served, vs)


def _socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise bad_param("port", port, f"a port free on {host} ({e.strerror})") from None
    sock.listen(2048)
    return sock


def _log(msg):
    print(f"[serve] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    try:
        _check(args)
        _socket(args.host, args.port).close()  # before loading: a taken port fails in a second
        cfg = engine_config(args)
    except WorkbookError as e:
        print(f"workbook serve: {e}", file=sys.stderr)
        return 2
    if cfg.tp_degree > 1:
        from workbook.serve.tp import supervise

        return supervise(cfg.tp_degree, argv)
    return serve(args, cfg)


def serve(args, cfg, wrap=None, device=None) -> int:
    """Load, warm up and serve until Ctrl-C/SIGTERM has drained the requests in flight."""
    try:
        sock = _socket(args.host, args.port)
        service = build(args, cfg, log=_log, wrap=wrap, device=device)
    except WorkbookError as e:
        print(f"workbook serve: {e}", file=sys.stderr)
        return 2
    import uvicorn

    from workbook.serve.app import build_app

    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    @asynccontextmanager
    async def lifespan(_app):
        _log(f"serving {url}  (models: {', '.join(service.models())})")
        print(f"serving {url}", flush=True)
        if args.ready_file:
            from pathlib import Path

            Path(args.ready_file).write_text(url + "\n")
        yield
        _log("draining: requests in flight finish, then the engine stops")
        service.batcher.close(timeout_s=args.drain_s)
        if hasattr(service.engine, "finish"):  # the other ranks leave with rank 0
            service.engine.finish()

    app = build_app(service)
    app.router.lifespan_context = lifespan
    server_class = _server_class()
    config = uvicorn.Config(app, log_level="warning", access_log=args.access_log,
                            timeout_graceful_shutdown=args.drain_s, lifespan="on")
    server_class(config).run(sockets=[sock])
    _log("stopped")
    return 0


def _server_class():
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a drain that a signal started ends in exit 0: uvicorn raises
        the signal again once drained, which would kill the process after a clean shutdown."""

        @contextmanager
        def capture_signals(self):
            sigs = (signal.SIGINT, signal.SIGTERM)
            before = {s: signal.signal(s, self.handle_exit) for s in sigs}
            try:
                yield
            finally:
                for s, handler in before.items():
                    signal.signal(s, handler)

    return Server


if __name__ == "__main__":
    sys.exit(main())
