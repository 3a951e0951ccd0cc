"""Admission, the queue and the engine's thread: static batching of the waiting requests.

The HTTP side submits requests; the engine's thread takes the waiting requests in order (up to
``max_batch``, and only while they fit the context together: left-padded to the longest prompt, the
batch needs that width plus the most tokens any of them asks for) as one batch and runs it to the
end while new ones queue. A request is refused at
once when ``max_queue`` are already waiting (the server answers 503 with Retry-After), so a flood
cannot grow memory or latency without bound. A request whose client goes away is dropped from the
queue, or, once running, stops receiving tokens (its batch ends early when no request in it still
wants any). :meth:`Batcher.close` lets the running and waiting requests finish, then stops the
thread. Each request that made all its tokens is recorded in :attr:`Batcher.metrics` (the
server's own clock, :mod:`workbook.serve.clock`).
"""
from __future__ import annotations

import threading
import time
from collections import deque

from workbook.serve.clock import ServerMetrics
from workbook.serve.engine import Request


def take(waiting: deque, max_batch: int, context: int) -> list[Request]:
    """The next batch off the front of ``waiting``: in order, at most ``max_batch``, and no request
    that would not get all its tokens beside the others (every row is padded to the longest prompt,
    and the batch decodes until the longest ``max_tokens``). The first always goes: the server
    admitted it because it fits alone."""
    batch = [waiting.popleft()]
    wide = batch[0].prefix_tokens + len(batch[0].prompt_ids)
    most = batch[0].max_tokens
    while waiting and len(batch) < max_batch:
        nxt = waiting[0]
        w = max(wide, nxt.prefix_tokens + len(nxt.prompt_ids))
        m = max(most, nxt.max_tokens)
        if w + m - 1 > context:
            break
        batch.append(waiting.popleft())
        wide, most = w, m
    return batch


class Batcher:
    def __init__(self, engine, max_queue: int, log=print, warm_up=None):
        """``warm_up`` (e.g. ``engine.warm_up``) runs first on the engine's thread, so what a
        thread pays on its first batch (CUDA library handles, the decode step's graphs) is paid
        before the first request; :meth:`wait_ready` waits for it."""
        self.engine, self.max_queue, self.log = engine, max_queue, log
        self._warm_up, self.warm_s, self._warm_error = warm_up, 0.0, None
        self._ready = threading.Event()
        self._cv = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._closing = False
        self.counts = {"admitted": 0, "refused_full": 0, "cancelled": 0, "failed_batches": 0}
        self.error: str | None = None  # the last batch's failure, for /health
        self.metrics = ServerMetrics()
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    def submit(self, req: Request) -> bool:
        """Queue ``req``; False (nothing queued) when ``max_queue`` are already waiting or the
        server is closing."""
        with self._cv:
            if self._closing or len(self._waiting) >= self.max_queue:
                self.counts["refused_full"] += 1
                return False
            self._waiting.append(req)
            self.counts["admitted"] += 1
            self._cv.notify()
            return True

    def cancel(self, req: Request) -> None:
        """The client went away: no more tokens; a waiting request leaves the queue now."""
        with self._cv:
            if req.cancelled or req.made >= req.max_tokens:
                return
            req.cancelled = True
            self.counts["cancelled"] += 1
            try:
                self._waiting.remove(req)
            except ValueError:
                pass  # running: the engine skips it from its next step on

    def state(self) -> dict:
        with self._cv:
            return {"waiting": len(self._waiting), "running": len(self._running),
                    "max_batch": self.engine.cfg.max_batch, "max_queue": self.max_queue,
                    "closing": self._closing, **self.counts, "batches": self.engine.batches}

    def wait_ready(self) -> float:
        """Seconds the warm-up took on the engine's thread; its exception if it failed."""
        self._ready.wait()
        if self._warm_error is not None:
            raise self._warm_error
        return self.warm_s

    def _loop(self) -> None:
        try:
            if self._warm_up is not None:
                self.warm_s = self._warm_up()
        except BaseException as e:  # noqa: BLE001 - handed to wait_ready's caller
            self._warm_error = e
            return
        finally:
            self._ready.set()
        while True:
            with self._cv:
                while not self._waiting and not self._closing:
                    self._cv.wait()
                if not self._waiting:  # closing, nothing left
                    return
                self._running = take(self._waiting, self.engine.cfg.max_batch,
                                     self.engine.cfg.context)
            batch = self._running
            try:
                self.engine.run_batch(batch)
                for r in batch:
                    if not r.cancelled and r.made >= r.max_tokens:
                        self.metrics.observe(r)
            except Exception as e:  # noqa: BLE001 - the server must keep serving; clients are told
                self.counts["failed_batches"] += 1
                self.error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                self.log(f"batch of {len(batch)} failed: {self.error}")
                for r in batch:
                    r.emit("error", self.error)
            finally:
                with self._cv:
                    self._running = []

    def close(self, timeout_s: float = 60) -> bool:
        """Finish what is running and waiting, then stop the thread; False if it is still busy
        after ``timeout_s``."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        t0 = time.perf_counter()
        self._thread.join(timeout_s)
        alive = self._thread.is_alive()
        self.log(f"engine stopped after {time.perf_counter() - t0:.1f} s" if not alive
                 else f"engine still busy after {timeout_s:.0f} s")
        return not alive
