"""The server's own clock: request histograms at ``/metrics``, under vLLM's names.

A load generator sees each request from outside: sent, first chunk, last chunk. The server sees
the same request from inside: it arrived, waited in the queue, its batch started, its first token
was made, its last token was made. Set side by side, the two accounts split a served request's
time into the engine's part and what HTTP, the event loop and the client add.

:class:`ServerMetrics` keeps Prometheus histograms of those spans (``prometheus_client``, one
registry per server). They carry the names vLLM gives its own under the ``workbook:`` prefix
(vLLM's ``vllm:time_to_first_token_seconds`` is ``workbook:time_to_first_token_seconds`` here), so
:func:`scrape` and :func:`window` read a vLLM server's ``/metrics`` the same way: a scrape before
and after a benchmark gives the mean of each span over that benchmark's requests.
"""
from __future__ import annotations

PREFIXES = ("workbook:", "vllm:")
# key: (name after the prefix, what it measures); every span is on the server's clock
SPANS = {
    "ttft": ("time_to_first_token_seconds", "Arrival to the first token made."),
    "e2el": ("e2e_request_latency_seconds", "Arrival to the last token made."),
    "queue": ("request_queue_time_seconds", "Arrival to the start of the request's batch."),
    "prefill": ("request_prefill_time_seconds", "Start of the batch to the first token made."),
    "decode": ("request_decode_time_seconds", "First token made to the last token made."),
    "tpot": ("request_time_per_output_token_seconds",
             "Decode time over the tokens after the first."),
}
BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5,
           0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class ServerMetrics:
    """The histograms of one server, observed once per request that made all its tokens."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self._spans = {k: Histogram(PREFIXES[0] + name, doc, ["model_name"],
                                    registry=self.registry, buckets=BUCKETS)
                       for k, (name, doc) in SPANS.items()}
        self._prompt = Counter(PREFIXES[0] + "prompt_tokens", "Prompt tokens of finished "
                               "requests (image patches included).", ["model_name"],
                               registry=self.registry)
        self._made = Counter(PREFIXES[0] + "generation_tokens", "Tokens made for finished "
                             "requests.", ["model_name"], registry=self.registry)

    def observe(self, req) -> None:
        """Record a finished request (an :class:`~workbook.serve.engine.Request` whose timestamps
        the engine set)."""
        if req.first_at is None or req.last_at is None or req.started_at is None:
            return
        spans = {"ttft": req.first_at - req.arrived_at, "e2el": req.last_at - req.arrived_at,
                 "queue": req.started_at - req.arrived_at,
                 "prefill": req.first_at - req.started_at, "decode": req.last_at - req.first_at}
        if req.made > 1:
            spans["tpot"] = spans["decode"] / (req.made - 1)
        for k, v in spans.items():
            self._spans[k].labels(req.model).observe(max(v, 0.0))
        self._prompt.labels(req.model).inc(req.prefix_tokens + len(req.prompt_ids))
        self._made.labels(req.model).inc(req.made)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for ``GET /metrics``."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def parse(text: str) -> dict:
    """``{model_name: {span: [sum_s, count]}}`` from exposition text, over the spans of
    :data:`SPANS` under either prefix; models without a label are under ``""``. Empty when the
    text has none of these histograms."""
    from prometheus_client.parser import text_string_to_metric_families

    names = {p + name: k for k, (name, _) in SPANS.items() for p in PREFIXES}
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        key = names.get(fam.name)
        if key is None:
            continue
        out.setdefault("", {})  # the histograms are there, even before any request finished
        for s in fam.samples:
            part = {fam.name + "_sum": 0, fam.name + "_count": 1}.get(s.name)
            if part is None:
                continue
            model = s.labels.get("model_name", "")
            pair = out.setdefault(model, {}).setdefault(key, [0.0, 0.0])
            pair[part] += s.value
    return out


def scrape(url: str, timeout_s: float = 10) -> dict | None:
    """:func:`parse` of ``url``'s ``/metrics``; None when it answers no such histograms (a server
    without them, or none at all)."""
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/metrics", timeout=timeout_s)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    try:
        got = parse(r.text)
    except ValueError:  # not exposition text
        return None
    return got or None


def window(before: dict | None, after: dict | None, model: str | None = None) -> dict | None:
    """Mean of each span, in ms, over the requests that finished between two scrapes (of one
    ``model_name``, or of all); None without both scrapes or without a finished request."""
    if before is None or after is None:
        return None

    def total(scr, key):
        models = [model] if model is not None else list(scr)
        s = c = 0.0
        for m in models:
            s_m, c_m = scr.get(m, {}).get(key, (0.0, 0.0))
            s, c = s + s_m, c + c_m
        return s, c

    out, requests = {}, 0
    for key in SPANS:
        s1, c1 = total(after, key)
        s0, c0 = total(before, key)
        n = c1 - c0
        out[f"server_mean_{key}_ms"] = 1e3 * (s1 - s0) / n if n > 0 else None
        if key == "e2el":
            requests = int(n)
    if requests == 0:
        return None
    return {"server_requests": requests, **out}
