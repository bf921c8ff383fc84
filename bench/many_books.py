"""Many quiet books: what they cost the writer when nothing happens, and the
writer's lag on a busy book among them.

A deployment gathers books (one per campaign), most of them quiet at any
moment. The phase adds `Sizes.quiet_books` empty books through the API, then
measures the writer's CPU with nothing to do (before and after the books were
added) and the age of the oldest event not yet acknowledged in the main
book's stream while wrk drives random assigns at full speed. That age is read
straight from Redis: `GET /metrics` reads every book's stream, and would load
the API with the very books being measured. Local runs only.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from phases import Bench, lag_summary, peak
from service import Background

IDLE_SECONDS = 3.0
# The writer reads a new quiet book ever less often, reaching its longest gap
# (0.5 s) once the book has been quiet for 5 s: the idle figure is taken after.
SETTLE_SECONDS = 5.0
CREATORS = 16  # books created side by side


def many_books(bench: Bench) -> dict:
    if bench.stack is None or bench.outbox is None:
        return {"skipped": "needs the writer's CPU and Redis directly (local run only)"}
    count = bench.sizes.quiet_books
    idle_before = _writer_cores_idle(bench)
    started = time.monotonic()
    with ThreadPoolExecutor(CREATORS) as pool:
        list(pool.map(lambda n: bench.api.create_book(f"{bench.tag}quiet-{n}"), range(count)))
    created_s = time.monotonic() - started
    bench.settle()
    time.sleep(SETTLE_SECONDS)
    idle_after = _writer_cores_idle(bench)
    with _StreamLag(bench) as lag:
        assign = peak(bench, "assign", seconds=bench.sizes.compare_seconds * 2,
                      tag=f"{bench.tag}quiet-")
    out = {
        "quiet_books": count,
        "books_created_s": round(created_s, 1),
        "writer_cores_idle": {"before": idle_before, "with_quiet_books": idle_after},
        "assign_rps": assign["rps"],
        "lag_at_peak_assign": lag_summary(lag.samples),
        "cpu_cores": assign.get("cpu_cores", {}),
    }
    p99 = out["lag_at_peak_assign"]["oldest_unacked_s"]["p99"]
    bench.log(f"{count:,} quiet books: writer idle {idle_before} -> {idle_after} cores; "
              f"lag p99 {p99} s at {assign['rps']:,.0f} assigns/s")
    return out


def _writer_cores_idle(bench: Bench) -> float:
    meter = bench.meter()
    assert meter is not None
    meter.start()
    time.sleep(IDLE_SECONDS)
    return meter.stop().get("writer", 0.0)


class _StreamLag(Background):
    """Samples, every 100 ms in a thread, how old the main book's oldest event
    not yet acknowledged by the writer's group is (0 when there is none)."""

    def __init__(self, bench: Bench, interval: float = 0.1) -> None:
        assert bench.outbox is not None
        self.redis = bench.outbox.redis
        number = self.redis.hget(bench.outbox.keys.books, bench.book)
        self.stream = bench.outbox.keys.book(int(number)).events
        self.interval = interval
        self.samples: list[dict[str, float]] = []

    def _oldest_unacked_ms(self) -> int | None:
        group = next(g for g in self.redis.xinfo_groups(self.stream) if g["name"] == "writer")
        if group["pending"]:
            oldest = self.redis.xpending(self.stream, "writer")["min"]
            if oldest is not None:  # else acknowledged since XINFO: what is left is new
                return int(str(oldest).split("-")[0])
        after = self.redis.xrange(self.stream, min=f"({group['last-delivered-id']}", count=1)
        return int(after[0][0].split("-")[0]) if after else None

    def _loop(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            seconds, micros = self.redis.time()
            oldest = self._oldest_unacked_ms()
            now_ms = seconds * 1000 + micros // 1000
            self.samples.append({"t": round(time.monotonic() - started, 3),
                                 "oldest_unacked_s": 0.0 if oldest is None
                                 else max(0.0, (now_ms - oldest) / 1000)})
            self._stop.wait(self.interval)
