"""The FastAPI application: ``/generate``, ``/v1/completions``, ``/v1/chat/completions``,
``/v1/models``, ``/health`` and ``/metrics`` (the server's own clock per request, under vLLM's
metric names: :mod:`workbook.serve.clock`).

Built around a :class:`~workbook.serve.protocol.Service` (engine, batcher, names), so tests and the
CLI make the same application. Schemas, admission and the refusal sentences live in
:mod:`workbook.serve.protocol`; here each route turns the engine's token events into its
response: one JSON answer, or server-sent events ending in ``data: [DONE]``.
"""
from __future__ import annotations

import time

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse

from workbook.serve.protocol import (
    ChatRequest,
    CompletionRequest,
    GenerateRequest,
    Refusal,
    Service,
    TextDelta,
    chat_prompt,
    completion_id,
    error_body,
    parse,
    prompt_of,
    sse,
)


def _refused(e: Refusal) -> JSONResponse:
    return JSONResponse(error_body(e.status, e.message), status_code=e.status, headers=e.headers)


def build_app(service: Service) -> FastAPI:
    app = FastAPI(title="workbook serve", docs_url=None, redoc_url=None)
    app.state.service = service
    enc = service.engine.encoder

    @app.exception_handler(Refusal)
    async def _refusal(_req, exc: Refusal):
        return _refused(exc)

    @app.get("/health")
    async def health():
        st = service.batcher.state()
        status = "closing" if st["closing"] else "ok"
        return JSONResponse({"status": status, **st, "last_error": service.batcher.error},
                            status_code=503 if st["closing"] else 200)

    @app.get("/metrics")
    async def metrics():
        body, kind = service.batcher.metrics.render()
        return Response(body, media_type=kind)

    @app.get("/v1/models")
    async def models():
        eng = service.engine
        data = [{"id": m, "object": "model", "created": service.started, "owned_by": "workbook",
                 "max_model_len": eng.cfg.context, "root": eng.cfg.model}
                for m in service.models()]
        return {"object": "list", "data": data, "server": eng.describe()}

    @app.post("/generate")
    async def generate(request: HttpRequest):
        arrived = time.perf_counter()
        body = await parse(request, GenerateRequest)
        image = None
        if body.image_size is not None or body.interp is not None:
            image = (body.image_size, body.interp or "hf_bicubic")
            if body.image_size is None:
                raise Refusal(400, "Field 'interp' needs 'image_size' too.")
        ids = enc.encode(body.prompt)
        req, events = await service.events(ids, body.max_new_tokens, image, arrived_at=arrived)
        tokens = [v async for k, v in events if k == "token"]
        return {"text": enc.decode(tokens), "prompt": body.prompt, "model": service.served,
                "usage": _usage(req.prefix_tokens + len(ids), len(tokens))}

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        arrived = time.perf_counter()
        body = await parse(request, CompletionRequest)
        Service.greedy_only(body)
        ids = prompt_of(body, enc)
        return await _answer(body, ids, "text_completion", "cmpl", arrived)

    @app.post("/v1/chat/completions")
    async def chat(request: HttpRequest):
        arrived = time.perf_counter()
        body = await parse(request, ChatRequest)
        Service.greedy_only(body)
        return await _answer(body, enc.encode(chat_prompt(body)), "chat.completion", "chatcmpl",
                             arrived)

    async def _answer(body, ids, kind, prefix, arrived):
        image = service._image_for_model(body.model)
        max_tokens = body.max_completion_tokens or body.max_tokens or 16
        req, events = await service.events(ids, max_tokens, image, model=body.model or "",
                                           arrived_at=arrived)
        n_in = req.prefix_tokens + len(ids)  # image tokens are prompt tokens, as vLLM counts them
        name, rid, created = body.model or service.served, completion_id(prefix), int(time.time())
        chat = kind == "chat.completion"
        if not body.stream:
            tokens = [v async for k, v in events if k == "token"]
            text = enc.decode(tokens)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": "length"} if chat else
                      {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"})
            return {"id": rid, "object": kind, "created": created, "model": name,
                    "choices": [choice], "usage": _usage(n_in, len(tokens))}
        usage_last = bool(body.stream_options and body.stream_options.include_usage)
        every = bool(body.stream_options and body.stream_options.continuous_usage_stats)
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text, finish=None, made=None):
            if chat:
                d = {"role": "assistant", "content": text} if made == 1 else {"content": text}
                c = {"index": 0, "delta": d, "finish_reason": finish}
            else:
                c = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            out = {"id": rid, "object": chunk_kind, "created": created, "model": name,
                   "choices": [c]}
            if every and made is not None:
                out["usage"] = _usage(n_in, made)
            return sse(out)

        async def stream():
            """One chunk per token (as vLLM sends them: a client's inter-token gaps are the
            engine's); the last token's chunk carries finish_reason."""
            delta, made = TextDelta(enc), 0
            try:
                async for k, v in events:
                    if k == "token":
                        made += 1
                        last = made == max_tokens
                        text = delta.add(v) + (delta.finish() if last else "")
                        yield chunk(text, "length" if last else None, made)
            except RuntimeError as e:  # the batch failed after the stream began: say so in it
                yield sse(error_body(500, f"Generation failed: {e}"))
                return
            if usage_last:
                yield sse({"id": rid, "object": chunk_kind, "created": created, "model": name,
                           "choices": [], "usage": _usage(n_in, made)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    return app


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}
