"""workbook serve on 127.0.0.1 with the tiny Mistral: endpoints, streaming, refusals, disconnects,
a full queue, and Ctrl-C/SIGTERM draining."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from workbook.serve import cli

TIMEOUT = 60


class Server:
    """The CLI's service behind uvicorn in a thread (port chosen by the OS)."""

    def __init__(self, argv):
        import uvicorn

        from workbook.serve.app import build_app

        args = cli.parser().parse_args(argv)
        self.service = cli.build(args, log=lambda _m: None)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(build_app(self.service), log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)
        self.client = httpx.Client(base_url=self.url, timeout=TIMEOUT)

    def close(self):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)
        self.service.batcher.close(10)


@pytest.fixture(scope="module")
def server():
    s = Server(["--max-batch", "4", "--max-queue", "8", "--context", "1024",
                "--vision-tower", "SigLIP-Tiny", "--vision-variants", "224:hf_bicubic,224:gather4"])
    yield s
    s.close()


def _stream(client, path, body):
    """(parsed chunks, saw [DONE]) of a streamed request."""
    chunks, done = [], False
    with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunks.append(json.loads(line[6:]))
    return chunks, done


def test_health_and_models(server):
    h = server.client.get("/health").json()
    assert h["status"] == "ok" and h["max_batch"] == 4 and h["max_queue"] == 8
    m = server.client.get("/v1/models").json()
    ids = [d["id"] for d in m["data"]]
    assert ids == ["tiny-mistral", "tiny-mistral:hf_bicubic@224", "tiny-mistral:gather4@224"]
    assert m["data"][0]["max_model_len"] == 1024
    assert m["server"]["scheduling"].startswith("static batching")
    assert m["server"]["vision"]["tower"] == "SigLIP-Tiny"


def test_generate_answers_in_the_seed_shape(server):
    r = server.client.post("/generate", json={"prompt": "hello", "max_new_tokens": 5})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"text", "prompt", "model", "usage"} and body["prompt"] == "hello"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}


def test_generate_is_greedy_and_batch_independent(server):
    """Four at once (one batch) make the tokens one alone makes."""
    alone = server.client.post("/generate", json={"prompt": "abc", "max_new_tokens": 6}).json()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as ex:
        prompts = ["abc", "a much longer prompt", "abc", "x"]
        got = list(ex.map(lambda p: server.client.post(
            "/generate", json={"prompt": p, "max_new_tokens": 6}).json(), prompts))
    assert got[0]["text"] == alone["text"] == got[2]["text"]


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"model": "tiny-mistral", "prompt": "hello", "max_tokens": 7}),
    ("/v1/chat/completions", {"model": "tiny-mistral",
                              "messages": [{"role": "user", "content": "hello"}],
                              "max_tokens": 7}),
])
def test_streams_one_chunk_per_token_then_usage_and_done(server, path, body):
    chunks, done = _stream(server.client, path, {**body, "stream": True,
                                                  "stream_options": {"include_usage": True}})
    assert done
    tokens = [c for c in chunks if c["choices"]]
    assert len(tokens) == 7
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None] * 6 + ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7
    if "chat" in path:
        assert tokens[0]["choices"][0]["delta"]["role"] == "assistant"
        assert tokens[0]["object"] == "chat.completion.chunk"
    text = "".join(c["choices"][0].get("text", c["choices"][0].get("delta", {}).get("content", ""))
                   for c in tokens)
    plain = server.client.post(path, json=body).json()
    assert plain["usage"]["completion_tokens"] == 7
    answer = plain["choices"][0].get("text", plain["choices"][0].get("message", {}).get("content"))
    assert text == answer


def test_metrics_time_each_finished_request_on_the_servers_clock(server):
    from workbook.serve import clock

    before = clock.scrape(server.url)
    t0 = time.perf_counter()
    chunks, done = _stream(server.client, "/v1/completions",
                           {"model": "tiny-mistral:gather4@224", "prompt": "hello",
                            "max_tokens": 5, "stream": True})
    client_ms = 1e3 * (time.perf_counter() - t0)
    assert done and len(chunks) == 5
    after = clock.scrape(server.url)
    got = clock.window(before, after, model="tiny-mistral:gather4@224")
    assert got["server_requests"] == 1
    ttft, e2el = got["server_mean_ttft_ms"], got["server_mean_e2el_ms"]
    assert 0 < got["server_mean_prefill_ms"] <= ttft <= e2el <= client_ms
    assert got["server_mean_queue_ms"] + got["server_mean_prefill_ms"] == pytest.approx(ttft)
    assert got["server_mean_decode_ms"] == pytest.approx(e2el - ttft)
    assert got["server_mean_tpot_ms"] == pytest.approx(got["server_mean_decode_ms"] / 4)
    assert clock.window(before, after, model="tiny-mistral") is None  # its own label
    text = server.client.get("/metrics").text
    assert 'workbook:generation_tokens_total{model_name="tiny-mistral:gather4@224"}' in text


def test_a_vision_variant_prefixes_its_image_tokens(server):
    body = {"model": "tiny-mistral:gather4@224", "prompt": "hi", "max_tokens": 2}
    r = server.client.post("/v1/completions", json=body).json()
    assert r["usage"]["prompt_tokens"] == (224 // 14) ** 2 + 2
    g = server.client.post("/generate", json={"prompt": "hi", "max_new_tokens": 2,
                                              "image_size": 224, "interp": "hf_bicubic"}).json()
    assert g["usage"]["prompt_tokens"] == (224 // 14) ** 2 + 2


@pytest.mark.parametrize("path,content,status,sentence", [
    ("/v1/completions", b'{"prompt": "hi",', 400, "The request body is not valid JSON"),
    ("/v1/completions", b'[1, 2]', 400, "The request body must be a JSON object."),
    ("/v1/completions", b'{"prompt": "hi", "bogus": 1}', 400, "Unknown field 'bogus'"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": "many"}', 400, "Field 'max_tokens'"),
    ("/v1/completions", b'{"max_tokens": 3}', 400, "Field 'prompt' is required."),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 5000}', 400,
     "but the context is 1024; shorten the prompt or max_tokens."),
    ("/v1/completions", b'{"prompt": "hi", "model": "gpt-9"}', 404,
     "The model 'gpt-9' does not exist here; served: tiny-mistral"),
    ("/v1/completions", b'{"prompt": "hi", "temperature": 0.8, "top_p": 0.9}', 400,
     "This server decodes greedily"),
    ("/v1/completions", b'{"prompt": ["a", "b"]}', 400, "send one prompt per request"),
    ("/v1/completions", b'{"prompt": "hi", "n": 2}', 400, "one choice per request"),
    ("/v1/chat/completions", b'{"messages": []}', 400, "Field 'messages'"),
    ("/generate", b'{"prompt": ""}', 400, "Field 'prompt'"),
    ("/generate", b'{"prompt": "hi", "image_size": 224, "interp": "nearest"}', 400,
     "Parameter interp='nearest' is not allowed"),
    ("/generate", b'{"prompt": "hi", "image_size": 4096}', 400, "but the context is 1024"),
])
def test_bad_requests_get_one_sentence_and_the_server_goes_on(server, path, content, status,
                                                               sentence):
    r = server.client.post(path, content=content)  # no Content-Type, as curl -d would send
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert sentence in err["message"] and err["code"] == status
    assert err["message"].count(". ") == 0 or err["message"].endswith("."), err["message"]
    ok = server.client.post("/generate", json={"prompt": "still there?", "max_new_tokens": 2})
    assert ok.status_code == 200


def test_a_client_that_leaves_mid_stream_frees_its_slot(server):
    before = server.service.batcher.state()
    with server.client.stream("POST", "/v1/completions",
                              json={"prompt": "long", "max_tokens": 900, "stream": True}) as r:
        lines = r.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("data: "):
                got += 1
            if got == 3:
                break
    # the server notices at its next write; the batch ends early instead of making 900 tokens
    deadline = time.time() + 20
    while time.time() < deadline:
        st = server.service.batcher.state()
        if st["cancelled"] > before["cancelled"] and st["running"] == 0:
            break
        time.sleep(0.05)
    st = server.service.batcher.state()
    assert st["cancelled"] == before["cancelled"] + 1 and st["running"] == 0
    r = server.client.post("/generate", json={"prompt": "next", "max_new_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_a_full_queue_answers_503_with_retry_after():
    s = Server(["--max-batch", "1", "--max-queue", "1", "--context", "256"])
    gate = threading.Event()
    run_batch = s.service.engine.run_batch

    def held(reqs):
        gate.wait(TIMEOUT)
        run_batch(reqs)

    s.service.engine.run_batch = held
    try:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as ex:
            body = {"prompt": "hi", "max_new_tokens": 2}
            first = ex.submit(s.client.post, "/generate", json=body)   # taken by the engine
            _wait(lambda: s.service.batcher.state()["running"] == 1)
            second = ex.submit(s.client.post, "/generate", json=body)  # waits in the queue
            _wait(lambda: s.service.batcher.state()["waiting"] == 1)
            third = s.client.post("/generate", json=body)
            assert third.status_code == 503 and third.headers["retry-after"] == "1"
            assert "queue is full (1 waiting)" in third.json()["error"]["message"]
            gate.set()
            assert first.result().status_code == 200 and second.result().status_code == 200
        assert s.service.batcher.state()["refused_full"] == 1
        assert s.client.post("/generate", json=body).status_code == 200
    finally:
        gate.set()
        s.close()


def _wait(cond, timeout=20):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def _start_cli(tmp_path, *options):
    ready = tmp_path / "url"
    p = subprocess.Popen([sys.executable, "-m", "workbook.cli", "serve", "--port", "0",
                          "--context", "512", "--ready-file", str(ready), *options],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ))
    _wait(lambda: ready.exists() or p.poll() is not None, timeout=120)
    assert p.poll() is None, p.stderr.read()
    return p, ready.read_text().strip()


def _drains_on(p, url, sig):
    """A stream in flight when ``sig`` arrives gets every token; then the server exits 0."""
    with httpx.Client(base_url=url, timeout=TIMEOUT) as c:
        with c.stream("POST", "/v1/completions",
                      json={"prompt": "drain me", "max_tokens": 300, "stream": True}) as r:
            lines = r.iter_lines()
            next(lines)
            p.send_signal(sig)
            rest = list(lines)
    assert "data: [DONE]" in rest  # the request in flight got all its tokens
    assert p.wait(60) == 0
    err = p.stderr.read()
    assert "draining" in err and "engine stopped" in err and "Traceback" not in err


def test_sigterm_drains_the_request_in_flight_and_exits_0(tmp_path):
    """(Ctrl-C takes the same path: the tensor-parallel test below sends SIGINT.)"""
    p, url = _start_cli(tmp_path)
    try:
        _drains_on(p, url, signal.SIGTERM)
    finally:
        if p.poll() is None:
            p.kill()


def test_two_tensor_parallel_ranks_serve_what_one_process_serves(tmp_path, server):
    """--tp-degree 2: two gloo ranks under torchrun, rank 0 serving; the same greedy tokens as one
    process, streaming works, and Ctrl-C drains and stops every rank."""
    p, url = _start_cli(tmp_path, "--tp-degree", "2")
    try:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as c:
            info = c.get("/v1/models").json()["server"]
            assert info["tp_degree"] == 2 and info["tp_mechanism"] == "local_shards"
            body = {"prompt": "tensor parallel", "max_new_tokens": 8}
            assert c.post("/generate", json=body).json() == server.client.post(
                "/generate", json=body).json()
            chunks, done = _stream(c, "/v1/completions", {"prompt": "hi", "max_tokens": 5,
                                                          "stream": True})
            assert done and len(chunks) == 5
        _drains_on(p, url, signal.SIGINT)
        left = subprocess.run(["pgrep", "-f", "workbook.serve.tp"], capture_output=True, text=True)
        assert left.stdout.strip() == "", "a rank outlived the server"
    finally:
        if p.poll() is None:
            p.kill()


@pytest.mark.parametrize("argv,sentence", [
    (["--port", "70000"], "Parameter port=70000 is not allowed: 0 (any free port) to 65535."),
    (["--max-batch", "0"], "Parameter max_batch=0 is not allowed"),
    (["--compile", "--device", "cpu"], "Parameter compile=True is not allowed: false on the CPU"),
    (["--vision-variants", "384:gather4"], "empty unless --vision-tower names a tower"),
    (["--vision-tower", "SigLIP-Tiny", "--vision-variants", "384:cubic"],
     "INTERP one of hf_bicubic"),
    (["--model", "/nonexistent/model"], "Parameter model='/nonexistent/model' is not allowed"),
    (["--tp-degree", "3"], "Parameter tp-degree=3 is not allowed: a degree local_shards can split "
                           "this model over: 1, 2, 4"),
])
def test_bad_options_are_one_sentence_and_exit_2(argv, sentence, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert sentence in err and "Traceback" not in err


def test_a_taken_port_is_refused_before_loading(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert cli.main(["--port", str(port)]) == 2
    assert f"Parameter port={port} is not allowed: a port free on 127.0.0.1" in capsys.readouterr().err


def test_the_notebook_drives_a_server_given_as_url(server, tmp_path, monkeypatch):
    """serving -p url URL: no server started, the load goes to URL, the report names what answered
    (its /v1/models) and says the engine-alone and A/B sections were not measured there."""
    from workbook import runner

    monkeypatch.setenv("WORKBOOK_OUTPUTS", str(tmp_path / "outputs"))
    # max_seconds far above the few seconds this takes: on a loaded 2-core CI machine the default
    # bound (20 s) once ended the one-at-a-time run with a request still in flight
    info = runner.run("serving", cli={"url": server.url, "request_rates": [8.0], "max_requests": 4,
                                      "concurrency": 0, "max_seconds": 180}, log=lambda *_: None)
    assert info.status == "ok", info.error
    res = json.loads((info.run_dir / "results.json").read_text())
    assert res["answered_by"] == "tiny-mistral" and res["url"] == server.url
    assert [r["benchmark"] for r in res["tables"]["load"]] == ["rate 8", "one at a time"]
    assert all(r["completed"] == 4 and r["failed"] == 0 for r in res["tables"]["load"]), [
        (r["benchmark"], r["completed"], r["failed"], r["duration"], r["errors"])
        for r in res["tables"]["load"]]
    assert {n["what"] for n in res["not_measured"]} == {
        "the engine alone (prefill, decode, roofline)", "the vision-prefix A/B"}
    html = (info.run_dir / "report.html").read_text()
    assert "tiny-mistral:hf_bicubic@224" in html  # what /v1/models listed
    assert not list((info.run_dir / "load").glob("server.log"))  # nothing was started


def test_decode_queues_exactly_the_steps_a_batch_needs(server):
    """One step ahead of the host: a batch takes as many decode steps as its longest request needs
    and no more; one whose client left stops within a step of it."""
    from workbook.serve.engine import Request

    engine = server.service.engine
    calls, step = [], engine.step_fn

    def counted(*a, **k):
        calls.append(1)
        return step(*a, **k)

    got = {0: [], 1: []}
    engine.step_fn = counted
    try:
        engine.run_batch([Request([5, 6, 7], 3, emit=lambda k, v: got[0].append(v)),
                          Request([5, 6], 6, emit=lambda k, v: got[1].append(v))])
        assert len(calls) == 5  # six tokens: one from the prefill, five steps
        assert [len(got[0]), len(got[1])] == [3 + 1, 6 + 1]  # the tokens, then "done"
        calls.clear()
        leaving, seen = Request([5, 6, 7], 50, emit=None), []

        def emit(kind, _v):
            seen.append(kind)
            if len(seen) == 2:
                leaving.cancelled = True
        leaving.emit = emit
        engine.run_batch([leaving])
        # two tokens out; the step after them was queued before the client was seen to leave
        assert seen == ["token", "token", "done"] and len(calls) == 2
    finally:
        engine.step_fn = step


def test_a_resumed_run_keeps_the_engine_alone_facts(tmp_path, monkeypatch):
    """A run resumed after the engine-alone section takes its rows and its roofline facts (device,
    copy bandwidth, step) from the run that measured them, and does not measure them again."""
    from workbook import proc, record
    from workbook.experiments import serving
    from workbook.specs.serving import SPEC

    monkeypatch.setenv("WORKBOOK_OUTPUTS", str(tmp_path / "outputs"))
    cfg = serving.configure(SPEC.defaults())
    result = {"copy_gb_s": 30.0, "weight_gb_per_step": 0.01, "roofline_tokens_s": 3000.0,
              "device_name": "cpu", "engine": {"scheduling": "static", "step": "eager"},
              "rows": [{"batch": 1, "decode_step_ms_p50": 1.5}]}

    def measured(argv, **_kw):
        from pathlib import Path

        Path(argv[-1]).write_text(json.dumps(result))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(proc, "run", measured)
    first = record.Recorder("serving", dict(cfg.p), run_dir=tmp_path / "a")
    rows = serving.direct(cfg, first)

    def never(*_a, **_kw):
        raise AssertionError("measured again")

    monkeypatch.setattr(proc, "run", never)
    monkeypatch.setenv(record.RESUME_ENV, str(tmp_path / "a"))
    again = record.Recorder("serving", dict(cfg.p), run_dir=tmp_path / "b")
    resumed = serving.direct(cfg, again)
    assert [r["decode_step_ms_p50"] for r in resumed] == [r["decode_step_ms_p50"] for r in rows]
    assert serving.roofline(again) == serving.roofline(first)
    assert serving.roofline(again)[0]["step"] == "eager"


def test_byte_text_streams_a_character_a_token_and_adds_up_to_the_whole():
    """Ids outside the byte range (most of a random-weight model's 32000) are one replacement
    character each, sent with their token, not held to the end; a multi-byte character waits
    for its last byte; the deltas add up to decode() of all the ids, whatever the mix."""
    import random

    from workbook.models.mistral import BYTE_OFFSET, Encoder, decode
    from workbook.serve.protocol import TextDelta

    enc = Encoder("bytes", "test", 32000)
    d = TextDelta(enc)
    assert [d.add(t) for t in (5000, 31999, 7000)] == ["\ufffd"] * 3  # each out at once
    euro = [b + BYTE_OFFSET for b in "€".encode()]  # three bytes
    assert [d.add(t) for t in euro] == ["", "", "€"]
    assert d.add(ord("a") + BYTE_OFFSET) == "a" and d.finish() == ""
    rng = random.Random(0)
    pool = [ord(c) + BYTE_OFFSET for c in "ab"] + euro + [0xC3 + BYTE_OFFSET, 0xFF + BYTE_OFFSET,
                                                           300, 0, 2]
    for _ in range(200):
        ids = [rng.choice(pool) for _ in range(rng.randint(1, 12))]
        d = TextDelta(enc)
        text = "".join(d.add(t) for t in ids) + d.finish()
        assert text == decode(ids) == d.text, ids


def test_overhead_compares_ttft_tpot_and_the_whole_request_with_the_engine_alone():
    """Batch 1 through the server against the engine alone: TTFT vs prefill, TPOT vs the step,
    and the whole request vs prefill plus a step a token after the first, which holds even when
    a server's text reaches the client late; each in the headline."""
    from workbook.experiments import serving as exp
    from workbook.experiments import serving_split as split

    direct = [{"batch": 1, "prefill_ms": 50.0, "decode_step_ms_p50": 5.0, "share_of_roofline": 0.7}]
    load = [{"group": "sequential", "median_ttft_ms": 55.0, "median_tpot_ms": 5.5,
             "median_e2el_ms": 750.0, "completed": 4, "total_output_tokens": 512,
             "output_throughput": 170.0}]
    rows = {r["metric"]: r for r in split.overhead(direct, load)}
    assert rows["TTFT vs prefill"]["overhead_pct"] == pytest.approx(10.0)
    assert rows["TPOT vs decode step"]["overhead_pct"] == pytest.approx(10.0)
    e2el = rows["E2EL vs prefill + 127 steps"]
    assert e2el["engine_ms"] == pytest.approx(50 + 127 * 5) and \
        e2el["overhead_pct"] == pytest.approx(100 * (750 / 685 - 1))

    class Rec:
        def headline(self, **kw):
            self.head = kw

    rec = Rec()
    exp.headline(rec, direct, load, list(rows.values()))
    assert {k: round(v, 2) for k, v in rec.head.items() if k.startswith("server_overhead")} == {
        "server_overhead_pct_ttft": 10.0, "server_overhead_pct_tpot": 10.0,
        "server_overhead_pct_e2el": round(100 * (750 / 685 - 1), 2)}


def test_targets_judge_decode_share_and_server_overhead_on_cuda_only(tmp_path):
    """On CUDA: batch-1 decode at >= 80 % of the roofline, TTFT and TPOT within 10 % of the engine
    alone, each met or not and recorded as ``targets``; E2EL is not a target; off CUDA, none."""
    from workbook import record
    from workbook.experiments import serving_split as split

    direct = [{"batch": 1, "prefill_ms": 20.0, "decode_step_ms_p50": 5.0, "share_of_roofline": 0.81,
               "device_share_of_roofline": 0.83},
              {"batch": 4, "prefill_ms": 30.0, "decode_step_ms_p50": 6.0, "share_of_roofline": 0.6}]
    over = [{"metric": "TTFT vs prefill", "engine_ms": 20.0, "server_ms": 22.4, "overhead_pct": 12.0},
            {"metric": "TPOT vs decode step", "engine_ms": 5.0, "server_ms": 5.2, "overhead_pct": 4.0},
            {"metric": "E2EL vs prefill + 127 steps", "engine_ms": 655.0, "server_ms": 900.0,
             "overhead_pct": 37.4}]
    rec = record.Recorder("serving", {}, run_dir=tmp_path)
    rows = split.targets(rec, direct, over, "cuda")
    assert [(r["target"], r["bar"], round(r["measured_pct"], 1), r["met"]) for r in rows] == [
        ("batch-1 decode step as served, share of the roofline", ">= 80 %", 81.0, "yes"),
        ("batch-1 TTFT vs prefill through the server", "<= +10 %", 12.0, "no"),
        ("batch-1 TPOT vs decode step through the server", "<= +10 %", 4.0, "yes")]
    assert rows[0]["note"] == "steps back to back on the device: 83.0 %"
    assert rows[1]["note"] == "22.40 ms against 20.00 ms"
    assert rec.table("targets") == rows
    direct[0]["share_of_roofline"] = 0.79
    assert split.targets(record.Recorder("serving", {}, run_dir=tmp_path / "b"), direct, [],
                         "cuda")[0]["met"] == "no"
    assert split.targets(rec, direct, over, "cpu") == []


def test_the_batch1_request_splits_into_engine_server_and_client():
    """One request at a time, three accounts of it (means): the engine alone, the server's own
    clock, the client; each difference in the table and the E2EL split in the headline."""
    from workbook.experiments import serving_split as split

    direct = [{"batch": 1, "prefill_ms": 50.0, "decode_step_ms_p50": 5.0}]
    seq = {"group": "sequential", "benchmark": "one at a time", "completed": 4,
           "total_output_tokens": 512, "mean_ttft_ms": 62.0, "mean_tpot_ms": 5.4,
           "mean_e2el_ms": 760.0, "server_requests": 4, "server_mean_queue_ms": 1.0,
           "server_mean_prefill_ms": 51.0, "server_mean_ttft_ms": 52.0,
           "server_mean_tpot_ms": 5.1, "server_mean_e2el_ms": 700.0}
    rows = {r["span"].split()[0]: r for r in split.batch1(direct, [seq])}
    assert rows["TTFT"]["server_minus_engine_ms"] == pytest.approx(2.0)
    assert rows["TTFT"]["client_minus_server_ms"] == pytest.approx(10.0)
    assert rows["queue"]["client_ms"] is None
    e2el = rows["E2EL"]
    assert e2el["engine_alone_ms"] == pytest.approx(50 + 127 * 5)
    assert e2el["server_minus_engine_ms"] == pytest.approx(700 - 685)
    assert e2el["client_minus_server_ms"] == pytest.approx(60.0)
    assert split.headline(list(rows.values())) == {
        "batch1_e2el_server_minus_engine_ms": pytest.approx(15.0),
        "batch1_e2el_client_minus_server_ms": pytest.approx(60.0)}


def test_a_server_without_request_histograms_is_said_not_measured():
    """A url server without /metrics histograms: no clock table, no split, and the report's
    not-measured list says why."""
    from workbook.experiments import serving_split as split

    class Rec:
        def __init__(self):
            self.missing = []

        def not_measured(self, what, why):
            self.missing.append((what, why))

    rec = Rec()
    load = [{"group": "sequential", "benchmark": "one at a time", "completed": 2,
             "total_output_tokens": 8, "mean_e2el_ms": 10.0}]
    assert split.per_benchmark(rec, load) == []
    assert rec.missing and "/metrics" in rec.missing[0][1]
    assert split.batch1([{"batch": 1, "prefill_ms": 1.0, "decode_step_ms_p50": 1.0}], load) == []
    assert split.headline([]) == {}


def test_ab_deltas_judge_ttft_and_the_servers_prefill_span_by_the_rounds_spread():
    """Per size, B against A per round: TTFT (queueing included) and the server's own prefill span
    (tower, projection, prefill); each judged against the spread of the rounds."""
    from types import SimpleNamespace

    from workbook.experiments import serving_ab as ab

    cfg = SimpleNamespace(p=SimpleNamespace(ab_interps=["hf_bicubic", "gather4"]))

    def row(config, rnd, ttft, prefill):
        return {"config": config, "size": 512, "round": rnd, "mean_ttft_ms": ttft,
                "mean_tpot_ms": 20.0, "server_mean_prefill_ms": prefill}

    rows = [row("hf_bicubic", 1, 1000, 500), row("gather4", 1, 1100, 450),
            row("hf_bicubic", 2, 1000, 520), row("gather4", 2, 800, 468)]
    (d,) = ab.deltas(cfg, rows)
    assert d["ttft_change_pct"] == pytest.approx(-5.0)
    assert d["verdict"] == "no change beyond the rounds' spread"  # +10 % and -20 %
    assert d["server_prefill_change_pct"] == pytest.approx(-10.0)
    assert d["server_prefill_band_pct"] == "-10.0 to -10.0" and d["server_prefill_verdict"] == \
        "B faster"
    for r in rows:
        del r["server_mean_prefill_ms"]  # a server without a clock
    (d,) = ab.deltas(cfg, rows)
    assert d["server_prefill_change_pct"] is None and d["server_prefill_verdict"].startswith(
        "not measured")


def test_the_warm_up_runs_on_the_thread_that_serves_and_its_failure_stops_the_start():
    """What a thread pays on its first batch is paid by the warm-up, on the engine's thread; a
    warm-up that fails is raised where the server is built, before it listens."""
    from workbook.serve.batcher import Batcher

    class Eng:
        cfg = type("C", (), {"max_batch": 1, "context": 64})()
        batches = 0

        def __init__(self, fail=False):
            self.fail, self.ran_on = fail, []

        def warm_up(self):
            self.ran_on.append(threading.current_thread())
            if self.fail:
                raise RuntimeError("out of memory while capturing the decode step")
            return 1.5

        def run_batch(self, reqs):
            self.ran_on.append(threading.current_thread())
            for r in reqs:
                r.emit("done", None)

    from workbook.serve.engine import Request

    eng = Eng()
    b = Batcher(eng, 4, log=lambda _m: None, warm_up=eng.warm_up)
    assert b.wait_ready() == 1.5
    done = threading.Event()
    assert b.submit(Request([3], 1, emit=lambda k, _v: done.set() if k == "done" else None))
    assert done.wait(10) and b.close(10)
    assert eng.ran_on[0] is eng.ran_on[1] is not threading.current_thread()
    bad = Eng(fail=True)
    b = Batcher(bad, 4, log=lambda _m: None, warm_up=bad.warm_up)
    with pytest.raises(RuntimeError, match="capturing the decode step"):
        b.wait_ready()


def test_each_benchmark_reads_the_gpus_sm_clock_and_the_rows_carry_it(standin_nvml, monkeypatch):
    """Where the server runs on this machine's GPU, the load generator's process reads the SM
    clock over each benchmark (here NVML's TEST STAND-IN: the clock drops to 345 MHz while idle);
    the benchmark's row and the server-clock table carry it; without NVML it says why."""
    from workbook import telemetry
    from workbook.experiments import serving as exp
    from workbook.experiments import serving_split as split
    from workbook.serve import bench

    nvml = standin_nvml(clocks=(1980, 345, 1980), reasons=(0, 0x1, 0))
    monkeypatch.setattr(bench, "_telemetry", lambda: telemetry.Telemetry(0, period_s=0.001,
                                                                           nvml=nvml))
    tm = bench._telemetry()
    with tm:
        time.sleep(0.03)
    gpu = bench.gpu_summary(tm)
    assert gpu["sm_clock_min_mhz"] == 345 and "idle" in gpu["clock_reasons"]
    assert bench.gpu_summary(None) is None
    assert bench.gpu_summary(telemetry.Telemetry(0, nvml=standin_nvml(fail_init=True))) == {
        "unavailable": "NVML could not be opened (Driver Not Loaded)"}

    item = {"label": "rate 2", "kind": "poisson", "value": 2.0, "group": "rates",
            "requests": [{"send": 0.0, "first_token": 0.05, "last_token": 0.5, "end": 0.5,
                          "output_tokens": 10, "prompt_tokens": 8, "ok": True, "error": ""}],
            "server_clock": {"server_requests": 1, "server_mean_e2el_ms": 490.0,
                             "server_mean_ttft_ms": 45.0},
            "gpu": gpu}
    row = exp.summarize(item, {})
    assert row["gpu_sm_clock_min_mhz"] == 345

    class Rec:
        def not_measured(self, *a):
            raise AssertionError(a)

    (clock_row,) = split.per_benchmark(Rec(), [row])
    assert clock_row["gpu_sm_clock_min_mhz"] == 345 and clock_row["client_minus_server_e2el_ms"] \
        == pytest.approx(10.0)
    del item["gpu"]
    (plain,) = split.per_benchmark(Rec(), [exp.summarize(item, {})])
    assert not any(k.startswith("gpu_") for k in plain)  # no GPU read: no empty columns

    class Said(Rec):
        def not_measured(self, what, why):
            self.said = (what, why)

    rec = Said()
    item["gpu"] = {"unavailable": "the nvidia-ml-py package (pynvml) is not installed"}
    split.per_benchmark(rec, [exp.summarize(item, {})])
    assert rec.said == ("the GPU's SM clock per benchmark",
                        "the nvidia-ml-py package (pynvml) is not installed")


def test_a_compiled_prefill_compiles_at_warm_up_and_makes_the_eager_tokens(tmp_path, monkeypatch):
    """``--compile-prefill``: the prefill goes through torch.compile with dynamic shapes. The
    warm-up compiles every graph it needs (batch 1 and more), so no prompt length (one token
    included) or batch size compiles anything while serving, and the tokens are the eager
    prefill's. Every cache is allocated outside compiled code, so its tensors are fixed addresses
    (the compiled step's CUDA graphs are skipped for tensors that are not). The graphs run on
    dynamo's eager backend here; what inductor makes of them is measured on a GPU."""
    import torch

    from workbook.models import mistral
    from workbook.serve.engine import PREFILL_GRAPHS, Engine, EngineConfig, Request

    graphs, real = [], torch.compile

    def counting(model, **kw):
        def backend(gm, _inputs):
            graphs.append(gm)
            return gm.forward
        return real(model, backend=backend, dynamic=kw.get("dynamic"))

    monkeypatch.setattr(torch, "compile", counting)
    path = str(mistral.create_tiny(tmp_path / "m", seed=0))
    quiet = lambda *_: None  # noqa: E731
    eager = Engine(EngineConfig(model=path, max_batch=4, context=96), log=quiet)
    compiled = Engine(EngineConfig(model=path, max_batch=4, context=96, compile_prefill=True),
                      log=quiet)
    try:
        eager.warm_up()
        compiled.warm_up()
        warm = len(graphs)
        assert 0 < warm <= PREFILL_GRAPHS
        for engine in (eager, compiled):
            for cache in engine._caches.values():
                for layer in cache.layers:
                    for t in (layer.keys, layer.values):
                        assert getattr(t, "_dynamo_static_input_type", None), "not a fixed address"

        def tokens(engine, prompts):
            out = [[] for _ in prompts]
            engine.run_batch([Request(p, 6, emit=lambda k, v, o=o: o.append(v) if k == "token"
                                      else None) for p, o in zip(prompts, out)])
            return out

        for prompts in ([[5]], [list(range(3, 40))], [[7, 8, 9], list(range(10, 30))],
                        [list(range(3, 12))] * 3, [[4]] * 2):
            assert tokens(compiled, prompts) == tokens(eager, prompts)
        assert len(graphs) == warm
        assert compiled.describe()["step"].endswith("prefill compiled (dynamic shapes)")
        assert eager.describe()["step"].endswith("prefill eager")
    finally:
        torch._dynamo.reset()


def test_a_batch_takes_only_requests_that_get_all_their_tokens_together(tmp_path):
    """Rows are padded to the longest prompt and decode until the longest ``max_tokens``: a request
    that would run out of context beside the ones ahead of it waits for the next batch (in order),
    and every request gets all the tokens it asked for."""
    import threading
    from collections import deque

    from workbook.models import mistral
    from workbook.serve.batcher import Batcher, take
    from workbook.serve.engine import Engine, EngineConfig, Request

    def req(prompt, new, out=None, done=None):
        def emit(kind, value):
            if kind == "token":
                out.append(value)
            elif kind == "done":
                done.set()
        return Request([5 + i % 50 for i in range(prompt)], new,
                       emit=emit if out is not None else (lambda *_: None))

    long, many, small = req(50, 4), req(2, 40), req(3, 5)
    q = deque([long, many, small])
    assert take(q, 4, 64) == [long]  # 50 + 40 - 1 positions > 64: the second waits
    assert take(q, 4, 64) == [many, small] and not q
    q = deque([req(3, 5) for _ in range(6)])
    assert len(take(q, 4, 64)) == 4 and len(q) == 2

    engine = Engine(EngineConfig(model=str(mistral.create_tiny(tmp_path / "m", seed=0)),
                                 max_batch=4, context=64), log=lambda *_: None)
    gate = threading.Event()  # both requests wait before the engine's thread takes any
    batcher = Batcher(engine, 8, log=lambda *_: None, warm_up=lambda: gate.wait(TIMEOUT) and 0.0)
    outs, dones = ([], []), (threading.Event(), threading.Event())
    for (prompt, new), out, done in zip([(50, 4), (2, 40)], outs, dones):
        assert batcher.submit(req(prompt, new, out, done))
    gate.set()
    try:
        assert all(d.wait(TIMEOUT) for d in dones)
        assert [len(o) for o in outs] == [4, 40]
        assert engine.batches == 2
    finally:
        batcher.close(10)
