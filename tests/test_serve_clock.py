"""workbook.serve.clock: the server's own clock per request, read back as vLLM's is read."""
import http.server
import threading

import pytest
from workbook.serve import clock
from workbook.serve.engine import Request


def _finished(model, arrived, started, first, last, made, prompt=4):
    r = Request([3] * prompt, made, emit=lambda *_: None, model=model, arrived_at=arrived)
    r.started_at, r.first_at, r.last_at, r.made = started, first, last, made
    return r


def test_each_span_is_observed_on_the_servers_clock_and_read_back_as_a_mean():
    m = clock.ServerMetrics()
    before = clock.parse(m.render()[0].decode())
    m.observe(_finished("a", 10.0, 10.5, 10.7, 11.7, 11))   # queue .5, prefill .2, decode 1
    m.observe(_finished("a", 20.0, 20.1, 20.4, 21.4, 11))   # queue .1, prefill .3, decode 1
    m.observe(_finished("b", 30.0, 30.0, 30.1, 30.2, 2))
    after = clock.parse(m.render()[0].decode())
    got = clock.window(before, after, model="a")
    assert got["server_requests"] == 2
    assert got["server_mean_queue_ms"] == pytest.approx(300)
    assert got["server_mean_prefill_ms"] == pytest.approx(250)
    assert got["server_mean_ttft_ms"] == pytest.approx(550)
    assert got["server_mean_e2el_ms"] == pytest.approx(1550)
    assert got["server_mean_decode_ms"] == pytest.approx(1000)
    assert got["server_mean_tpot_ms"] == pytest.approx(100)
    everyone = clock.window(before, after)
    assert everyone["server_requests"] == 3
    assert everyone["server_mean_ttft_ms"] == pytest.approx((700 + 400 + 100) / 3)


def test_a_request_without_its_timestamps_is_not_observed():
    m = clock.ServerMetrics()
    r = Request([3], 4, emit=lambda *_: None)
    m.observe(r)  # never started: it left the queue
    assert clock.parse(m.render()[0].decode()) == {"": {}}


# vLLM's exposition of the same histograms (its names, its model_name label), trimmed
VLLM_TEXT = """\
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.9
vllm:time_to_first_token_seconds_bucket{engine="0",le="1.0",model_name="m"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 3.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 3.0
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="m"} 6.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} 3.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="m"} 3.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 0.0
"""


def test_a_vllm_servers_histograms_read_the_same_way():
    empty = {"m": {"ttft": [0.0, 0.0], "e2el": [0.0, 0.0]}}
    got = clock.window(empty, clock.parse(VLLM_TEXT))
    assert got["server_requests"] == 3
    assert got["server_mean_ttft_ms"] == pytest.approx(300)
    assert got["server_mean_e2el_ms"] == pytest.approx(2000)
    assert got["server_mean_queue_ms"] is None  # not in this exposition


def test_no_window_without_both_scrapes_or_without_a_finished_request():
    after = clock.parse(VLLM_TEXT)
    assert clock.window(None, after) is None
    assert clock.window(after, after) is None


@pytest.fixture
def plain_http():
    """A server with no /metrics (404) and one answering something that is not exposition."""
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/text"):
                body = b"<html>hello</html>"
                self.send_response(200)
            else:
                body = b"not found"
                self.send_response(404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_a_server_without_request_histograms_scrapes_as_none(plain_http):
    assert clock.scrape(plain_http) is None
    assert clock.scrape(plain_http + "/text") is None
    assert clock.scrape("http://127.0.0.1:9") is None  # nothing listening
