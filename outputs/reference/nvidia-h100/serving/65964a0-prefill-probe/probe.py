"""Where the served batch-1 prefill's extra time goes: the same engine, one process, four ways."""
import json, os, socket, statistics, sys, threading, time
import httpx, torch, uvicorn
from workbook.serve import cli
from workbook.serve.app import build_app
from workbook.serve.engine import Request
from workbook.serve.direct import _timed_batch
from workbook.models import mistral

N = int(os.environ.get("N", "10"))
CPU = os.environ.get("DEV") == "cpu"
model, _ = mistral.workbook_model("" if CPU else "mistral-7b-shape")
args = cli.parser().parse_args(["--model", model, "--device", "cpu" if CPU else "cuda",
                                "--dtype", "float32" if CPU else "bfloat16",
                                "--max-batch", "1", "--context", "256"] + ([] if CPU else ["--compile"]))
t0 = time.perf_counter()
svc = cli.build(args, log=lambda m: print("[serve]", m, flush=True))
print(f"built in {time.perf_counter()-t0:.1f} s", flush=True)
eng, bat = svc.engine, svc.batcher
out = {}
ids = [3 + i for i in range(128)]

# A: run_batch on the main thread (what direct measures)
a = [_timed_batch(eng, 1, 128, 4)["prefill_ms"] for _ in range(N)]
out["A_main_thread_prefill_ms"] = a

# B: through the batcher's engine thread, no HTTP
spans = []
orig = bat.metrics.observe
def spy(r):
    spans.append(((r.first_at - r.started_at) * 1e3, (r.started_at - r.arrived_at) * 1e3,
                  (r.last_at - r.first_at) * 1e3 / max(1, r.made - 1)))
    orig(r)
bat.metrics.observe = spy
b = []
for _ in range(N):
    ev = threading.Event()
    r = Request(list(ids), 128, emit=lambda k, v: ev.set() if k == "done" else None)
    bat.submit(r); ev.wait(60)
out["B_engine_thread"] = list(spans); spans.clear()

# C: HTTP (uvicorn in a thread, as workbook serve), streamed, one at a time
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(64)
url = f"http://127.0.0.1:{sock.getsockname()[1]}"
server = uvicorn.Server(uvicorn.Config(build_app(svc), log_level="warning", access_log=False))
th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True); th.start()
while not server.started: time.sleep(0.05)

def http_run(label):
    cl = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for _ in range(N):
            t = time.perf_counter(); first = None
            with c.stream("POST", "/v1/completions", json={"model": svc.served, "prompt": ids,
                          "max_tokens": 128, "stream": True}) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: {") and first is None:
                        first = time.perf_counter()
            cl.append(((first - t) * 1e3, (time.perf_counter() - t) * 1e3))
    out[label] = {"server": list(spans), "client_ttft_e2el_ms": cl}; spans.clear()

http_run("C_http")
sys.setswitchinterval(0.0002)
http_run("D_http_switch_0.2ms")
sys.setswitchinterval(0.005)
# E: the event loop busy? just idle ticks of a sleeping thread holding nothing: repeat C
http_run("E_http_again")
def med(v): return round(statistics.median(v), 2)
print("A main-thread prefill p50", med(a), "all", [round(x,1) for x in a])
for k in ("B_engine_thread",):
    print(k, "prefill p50", med([s[0] for s in out[k]]), "tpot p50", med([s[2] for s in out[k]]), [round(s[0],1) for s in out[k]])
for k in ("C_http", "D_http_switch_0.2ms", "E_http_again"):
    s = out[k]["server"]
    print(k, "prefill p50", med([x[0] for x in s]), "queue p50", med([x[1] for x in s]), "tpot p50", med([x[2] for x in s]),
          "client ttft p50", med([x[0] for x in out[k]["client_ttft_e2el_ms"]]), [round(x[0],1) for x in s])
json.dump(out, open(os.environ.get("OUT", ".") + "/probe40.json", "w"), indent=1)
server.should_exit = True
