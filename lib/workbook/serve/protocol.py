"""What the server's routes share: request schemas, admission, refusals, the token stream.

``POST /generate`` takes ``{prompt, max_new_tokens}`` (plus an optional image) and answers
``{text, prompt, model, usage}``, the shape the tensor-parallel experiment returns.
``POST /v1/completions`` and ``/v1/chat/completions`` follow OpenAI's API, streamed as server-sent
events with ``stream: true`` (one chunk per token, ``stream_options.include_usage`` for a closing
usage chunk, then ``data: [DONE]``), so load generators written for vLLM drive this server
unchanged. A model name ``<served>:<interp>@<size>`` (listed by ``/v1/models`` when a vision tower
is loaded) prepends that image prefix to every request that names it, which is how a load
generator that cannot send images still measures a VLM-shaped request.

Every refusal is one sentence in OpenAI's error shape: a body that is not JSON or has unknown or
badly typed fields is 400, an unknown model 404, a prompt that does not fit the context 400, a
full queue 503 with ``Retry-After``. Decoding is greedy and runs to ``max_tokens``; a request asking
for sampling (temperature above 0 with top_p/top_k), several choices, stop strings or log
probabilities is refused rather than silently served otherwise.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from workbook.errors import ParameterError
from workbook.serve.engine import Request

RETRY_AFTER_S = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _Sampling(_Strict):
    """Fields OpenAI clients send; decoding here is greedy, so only greedy values are accepted."""

    model: str = ""
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = None
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = True
    min_tokens: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    user: str | None = None
    logprobs: int | bool | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str]
    echo: bool = False


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[dict]


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class GenerateRequest(_Strict):
    """The tensor-parallel seed's request, plus an optional image for a vision prefix."""

    prompt: str = Field(min_length=1)
    max_new_tokens: int = Field(16, ge=1)
    image_size: int | None = None
    interp: str | None = None


class Refusal(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error_body(status: int, message: str) -> dict:
    kind = "server_busy" if status == 503 else ("not_found_error" if status == 404
                                                 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": status}}


async def parse(request, model):
    """The body as ``model``, whatever its Content-Type says (curl -d sends a form type); one
    sentence on what is wrong otherwise."""
    from pydantic import ValidationError

    raw = await request.body()
    try:
        data = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError) as e:
        raise Refusal(400, f"The request body is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise Refusal(400, "The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise Refusal(400, validation_sentence(e.errors())) from None


def validation_sentence(errors) -> str:
    """Pydantic's first error as one sentence naming the field."""
    if not errors:
        return "The request body is not valid."
    e = errors[0]
    where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
    if e.get("type") == "extra_forbidden":
        return f"Unknown field {where!r}: this server does not take it."
    if e.get("type") == "missing":
        return f"Field {where!r} is required."
    return f"Field {where!r}: {e.get('msg', 'invalid')}."


class Service:
    """What the routes share: the engine, its batcher, the served model names."""

    def __init__(self, engine, batcher, served: str, variants: list[tuple[int, str]]):
        self.engine, self.batcher, self.served = engine, batcher, served
        self.variants = {f"{served}:{interp}@{size}": (size, interp) for size, interp in variants}
        self.started = int(time.time())

    def models(self) -> list[str]:
        return [self.served, *self.variants]

    # -- admission ----------------------------------------------------------------------------
    def _image_for_model(self, model: str) -> tuple[int, str] | None:
        if model in ("", self.served):
            return None
        if model in self.variants:
            return self.variants[model]
        raise Refusal(404, f"The model {model!r} does not exist here; served: "
                           f"{', '.join(self.models())}.")

    @staticmethod
    def greedy_only(r: _Sampling) -> None:
        sampling = ((r.temperature or 0) > 0 and ((r.top_p or 1) < 1 or (r.top_k or 0) > 1))
        if sampling:
            raise Refusal(400, "This server decodes greedily: send temperature 0 (or no "
                               "top_p/top_k) to benchmark it.")
        if r.n != 1:
            raise Refusal(400, f"Field 'n' is {r.n}: this server makes one choice per request.")
        if r.stop:
            raise Refusal(400, "Field 'stop' is not supported: generation runs to max_tokens.")
        if r.logprobs:
            raise Refusal(400, "Field 'logprobs' is not supported by this server.")

    def admit(self, prompt_ids: list[int], max_tokens: int, image, emit, *, model: str = "",
              arrived_at: float | None = None) -> Request:
        eng = self.engine
        if not prompt_ids:
            raise Refusal(400, "The prompt encodes to no token; send at least one character.")
        if any(not 0 <= t < eng.vocab_size for t in prompt_ids):
            raise Refusal(400, f"The prompt holds token ids outside the vocabulary "
                               f"(0 to {eng.vocab_size - 1}).")
        prefix = 0
        if image is not None:
            if eng.vision is None:
                raise Refusal(400, "This server has no vision tower; start it with "
                                   "--vision-tower to send images.")
            try:
                eng.vision.check(*image)
            except ParameterError as e:
                raise Refusal(400, str(e)) from None
            prefix = eng.vision.tokens(image[0])
        need = prefix + len(prompt_ids) + max_tokens
        if need > eng.cfg.context:
            raise Refusal(400, f"The request needs {need} positions ({prefix} image, "
                               f"{len(prompt_ids)} prompt, {max_tokens} new) but the context is "
                               f"{eng.cfg.context}; shorten the prompt or max_tokens.")
        req = Request(prompt_ids, max_tokens, emit=emit, image=image, prefix_tokens=prefix,
                      model=model or self.served)
        if arrived_at is not None:
            req.arrived_at = arrived_at
        if not self.batcher.submit(req):
            st = self.batcher.state()
            why = ("is shutting down" if st["closing"]
                   else f"queue is full ({st['waiting']} waiting)")
            raise Refusal(503, f"The server {why}; retry after {RETRY_AFTER_S} s.",
                          {"Retry-After": str(RETRY_AFTER_S)})
        return req

    # -- one request, as a stream of events -------------------------------------------------
    async def events(self, prompt_ids, max_tokens, image, *, model: str = "",
                     arrived_at: float | None = None):
        """Admit, then yield ("token", id) ... ("done", None) as the engine makes them; a caller
        that stops iterating (client gone) cancels the request. ``arrived_at`` (the server's
        ``time.perf_counter()`` when the HTTP request came in) starts its clock."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def emit(kind, value):
            loop.call_soon_threadsafe(q.put_nowait, (kind, value))

        req = self.admit(prompt_ids, max_tokens, image, emit, model=model, arrived_at=arrived_at)
        return req, self._drain(req, q)

    async def _drain(self, req, q):
        try:
            while True:
                kind, value = await q.get()
                if kind == "error":
                    raise RuntimeError(value)
                yield kind, value
                if kind == "done":
                    return
        finally:
            self.batcher.cancel(req)  # a no-op once it has all its tokens


def prompt_of(body: CompletionRequest, encoder) -> list[int]:
    p = body.prompt
    if isinstance(p, str):
        return encoder.encode(p)
    if p and all(isinstance(t, int) for t in p):
        return list(p)
    if len(p) == 1 and isinstance(p[0], str):
        return encoder.encode(p[0])
    raise Refusal(400, "Field 'prompt' holds several prompts: send one prompt per request.")


def chat_prompt(body: ChatRequest) -> str:
    """The messages as one prompt (no chat template: the seeded model has none)."""
    parts = []
    for m in body.messages:
        text = m.content if isinstance(m.content, str) else " ".join(
            c.get("text", "") for c in m.content if c.get("type") == "text")
        parts.append(f"{m.role}: {text}")
    return "\n".join(parts) + "\nassistant:"


class TextDelta:
    """The text each new token adds. A token may end inside a multi-byte character: its text waits
    for the token that completes it. With the byte-level encoding that is decided byte by byte
    (an id outside the byte range is one replacement character, at once), so a model whose ids
    are mostly outside it, as a random-weight model with a large vocabulary makes, still streams
    a character a token; with a tokenizer, a text ending in U+FFFD waits for the next token."""

    def __init__(self, encoder):
        import codecs

        from workbook.models.mistral import BYTE_OFFSET

        self.encoder, self.ids, self.text = encoder, [], ""
        self._bytes = getattr(encoder, "kind", None) == "bytes"
        self._offset = BYTE_OFFSET
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token: int) -> str:
        self.ids.append(token)
        if self._bytes:
            i = int(token) - self._offset
            if 0 <= i < 256:
                delta = self._utf8.decode(bytes([i]))
            else:  # what decode() writes for it: U+FFFD, after any unfinished character
                delta = self._utf8.decode(b"", final=True) + "\ufffd"
                self._utf8.reset()
            self.text += delta
            return delta
        full = self.encoder.decode(self.ids)
        if full.endswith("\ufffd"):  # an unfinished character: wait for the next token
            return ""
        delta = full.removeprefix(self.text)
        self.text = full
        return delta

    def finish(self) -> str:
        if self._bytes:
            delta = self._utf8.decode(b"", final=True)
            self._utf8.reset()
            self.text += delta
            return delta
        full = self.encoder.decode(self.ids)
        delta = full[len(self.text):] if full.startswith(self.text) else ""
        self.text = full
        return delta


def sse(obj) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
