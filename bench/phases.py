"""The measured phases: peak throughput, latency at fixed rates, the writer's
lag and drain rate. Each returns plain dicts that go into latest.json as is.
(Memory and bulk loading are in bulk.py.)"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from latency import build_requests, hey, open_loop
from machine import CpuMeter
from service import Api, LagSampler, Outbox, rewrite_aof, write_pairs
from stack import Stack
from wrk import WrkResult, run_wrk

QUIET_BUDGET = 120.0  # seconds Bench.quiet() may wait, over the whole run
# The machine counts as quiet below this many busy cores: an idle stack (a
# writer among 2,000 quiet books included) uses about 0.1.
QUIET_CORES = 0.3


@dataclass
class Sizes:
    bulk_codes: int = 1_000_000
    peak_seconds: float = 10.0
    latency_seconds: float = 10.0
    drain_seconds: float = 10.0
    threads: int = 2
    # wrk's connections for the peaks. At 64 the hot paths were bound by round
    # trips, not by CPU (the machine sat at ~1.55 of its 2 cores, the API at 0.7
    # of one); at 256 each event-loop turn has more requests to pipeline and
    # the machine is busy, while /healthz does 3-5% less.
    connections: int = 256
    # The open-loop client's connections at fixed rates: at least this many,
    # and one per 100 requests/s (latency_rate_per_connection). A connection
    # carries one request at a time, so at 7 ms a request it carries at most
    # ~140/s: at 80% of a 13k/s peak, 64 connections left requests queueing in
    # the client (p99 494 ms), where 128 gave 18 ms in a trial (this rule gives
    # about 100 there). Many more cost one uvicorn worker a lot: 5x more
    # measured a 5-10x worse p99 at the same rate.
    latency_connections: int = 64
    latency_rate_per_connection: float = 100.0
    # Flat cost and workers (scaling.py): wrk runs of this length, compared in pairs.
    compare_seconds: float = 3.0
    small_book_codes: int = 10_000
    large_book_codes: int = 5_000_000
    quiet_books: int = 2_000  # quiet.py: empty books added for the last phase

    @classmethod
    def quick(cls) -> Sizes:
        return cls(bulk_codes=100_000, peak_seconds=5.0, latency_seconds=5.0,
                   drain_seconds=5.0, compare_seconds=2.0, large_book_codes=1_000_000,
                   quiet_books=500)


@dataclass
class Bench:
    """Everything a phase needs; `stack` and `outbox` are None against a remote URL."""

    api: Api
    sizes: Sizes
    tmp: Path
    tag: str
    stack: Stack | None = None
    outbox: Outbox | None = None
    book: str = ""  # the book random assigns draw from
    pool_book: str = ""  # the book whose codes are pre-assigned for lock and redeem
    pooled: int = 0  # codes of the pool book assigned so far
    results: dict = field(default_factory=dict)
    quiet_budget: float = QUIET_BUDGET
    noisy_noted: bool = False
    # Redis's automatic AOF rewrite rule (percentage, min size) while the run
    # applies it between phases itself (hold_aof_rewrites); None: Redis's own.
    aof_rule: tuple[int, int] | None = None
    aof_rewrites_between_phases: int = 0

    def meter(self) -> CpuMeter | None:
        if self.stack is None:
            return None
        procs = self.stack.procs
        pids = {name: p.pid for name, p in procs.items() if name not in ("api", "postgres")}
        pids["bench"] = os.getpid()
        # The API with its worker processes, when it runs several.
        trees = {"api": procs["api"].pid} if "api" in procs else {}
        if self.stack.pg_data is not None:
            trees["postgres"] = int((self.stack.pg_data / "postmaster.pid").read_text().split()[0])
        return CpuMeter(pids, trees)

    def hold_aof_rewrites(self) -> None:
        """Keeps Redis's automatic AOF rewrites out of the measured phases: a
        rewrite forks and copies the whole dataset, which takes one of this
        machine's two cores for seconds, so one landing by chance in a 10 s
        phase decides that phase's figures. Redis's own rule is applied
        between phases instead (`rewrite_aof_if_due`). The soak leaves it on."""
        assert self.outbox is not None
        redis = self.outbox.redis
        config = redis.config_get("auto-aof-rewrite-*")
        self.aof_rule = (int(config["auto-aof-rewrite-percentage"]),
                         int(config["auto-aof-rewrite-min-size"]))
        redis.config_set("auto-aof-rewrite-percentage", 0)

    def rewrite_aof_if_due(self) -> None:
        """Rewrites the AOF when Redis would have by now: the file is over the
        minimum size and has grown by the percentage since the last rewrite."""
        if self.aof_rule is None or self.outbox is None:
            return
        percentage, min_size = self.aof_rule
        info = self.outbox.redis.info("persistence")
        current, base = int(info["aof_current_size"]), int(info["aof_base_size"])
        if percentage and current > min_size and (current - base) * 100 >= base * percentage:
            self.log(f"rewriting the AOF between phases ({current / 2**20:,.0f} MiB, "
                     f"{base / 2**20:,.0f} MiB after the last rewrite)")
            rewrite_aof(self.outbox.redis)
            self.aof_rewrites_between_phases += 1

    def quiet(self) -> None:
        """Before a measured phase: rewrites the AOF if it is due, then waits
        (QUIET_BUDGET seconds at most over the whole run) for the machine to
        be nearly idle. Our own stack counts too: after the flat-cost phase's
        4,000,000-code top-up, Postgres's autovacuum of `codes` ran into the
        large-book runs (Postgres 0.44 cores against 0.30, 0.73-0.76x twice)."""
        self.rewrite_aof_if_due()
        meter = self.meter()
        if meter is None:
            return
        while self.quiet_budget > 0:
            meter.start()
            time.sleep(0.5)
            self.quiet_budget -= 0.5
            if meter.stop().get("machine", 0.0) < QUIET_CORES:
                return
        if not self.noisy_noted:
            self.noisy_noted = True
            self.log("other processes keep this machine busy; measuring anyway")

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def settle(self, trimmed: bool = False, timeout: float = 120.0) -> None:
        """Waits for the writer to catch up, so one phase's backlog does not
        weigh on the next (through GET /metrics when Redis is out of reach)."""
        if self.outbox is not None:
            self.outbox.wait_drained(timeout=timeout, trimmed=trimmed)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            gauges = self.api.outbox_gauges()
            # Absent gauges (gauges_up 0: the API could not read Redis) say nothing.
            if gauges.get("couponsvc_outbox_gauges_up") == 1 and \
                    not gauges.get("couponsvc_outbox_lag_events", 0) and \
                    not gauges.get("couponsvc_outbox_pending_events", 0):
                return
            time.sleep(0.1)
        self.log("the writer did not catch up in time; going on")

    def memory(self) -> int:
        if self.stack is None or self.outbox is None:
            return 0
        return int(self.outbox.redis.info("memory")["used_memory"])

    # --- (code, user) pools ---------------------------------------------------

    def pool(self, name: str, count: int) -> tuple[Path, list[tuple[str, str]], dict]:
        """`count` fresh codes of the pool book, each assigned to its own user
        through POST /coupons/assign/{code} (driven by wrk)."""
        started = time.monotonic()
        codes = self.api.generate(self.pool_book, count)
        generated = time.monotonic()
        self.pooled += count
        path = self.tmp / f"pairs-{name}.txt"
        pairs = write_pairs(path, codes, f"{self.tag}{name}-")
        self.settle(trimmed=True)
        settled = time.monotonic()
        before = self.memory()
        for _ in range(3):  # assigning a code to its owner again is a no-op: safe to repeat
            result = run_wrk(self.api.url, "assign_code", self.api.token,
                             seconds=60 + count / 200, threads=self.sizes.threads,
                             connections=self.sizes.connections, pairs=path,
                             until_pairs_used=True)
            assigned = self.api.book(self.pool_book)["counts"]["assigned"]
            if assigned >= self.pooled and set(result.statuses) <= {"200"}:
                break
            self.log(f"pre-assign {name}: {assigned} of {count} assigned ({result.statuses}, "
                     f"{result.errors}); again")
        else:
            raise RuntimeError(f"could not pre-assign the {name} pool: {result.statuses}")
        assigned_at = time.monotonic()
        self.settle(trimmed=True)
        self.log(f"pool {name}: generated in {generated - started:.1f} s, writer caught up in "
                 f"{settled - generated:.1f} s, assigned in {assigned_at - settled:.1f} s, "
                 f"writer caught up in {time.monotonic() - assigned_at:.1f} s")
        info = {"codes": count, "assign_code_rps": round(result.rps, 1)}
        if before:
            info["redis_bytes_per_assigned_code"] = round((self.memory() - before) / count, 1)
        return path, pairs, info


# --- peak throughput ----------------------------------------------------------


def peak(bench: Bench, mode: str, *, pairs: Path | None = None, sample_lag: bool = False,
         until_pairs_used: bool = False, book: str | None = None,
         seconds: float | None = None, tag: str | None = None) -> dict:
    """wrk at full speed; random assigns draw from `book` (default the main
    book; several ids, comma-separated, are taken in turn), for new users
    named from `tag` (a run that reuses a book needs its own)."""
    bench.quiet()
    meter = bench.meter()
    if meter:
        meter.start()
    sampler = LagSampler(bench.api, bench.outbox) if sample_lag else None
    if sampler:
        sampler.__enter__()
    try:
        result: WrkResult = run_wrk(
            bench.api.url, mode, bench.api.token, seconds=seconds or bench.sizes.peak_seconds,
            threads=bench.sizes.threads, connections=bench.sizes.connections,
            book=book or bench.book,
            pairs=pairs, tag=tag or f"{bench.tag}{mode}-", until_pairs_used=until_pairs_used)
    finally:
        if sampler:
            sampler.__exit__(None, None, None)
    out = result.as_dict()
    if meter:
        out["cpu_cores"] = meter.stop()
    if sampler:
        out["lag"] = lag_summary(sampler.samples)
    bench.log(f"peak {mode}: {result.rps:,.0f} req/s over {result.seconds:.1f} s "
              f"({result.statuses})")
    return out


def lag_summary(samples: list[dict[str, float]]) -> dict:
    ages = sorted(s["oldest_unacked_s"] for s in samples
                  if not math.isnan(s.get("oldest_unacked_s", math.nan)))
    # The backlog read from Redis; against --url, the API's own gauges.
    found = (s.get("backlog", s.get("metrics_backlog", math.nan)) for s in samples)
    backlog = sorted(b for b in found if not math.isnan(b))

    def pct(values: list[float], p: float) -> float | None:
        if not values:
            return None
        return round(values[max(0, math.ceil(p / 100 * len(values)) - 1)], 4)

    return {"samples": len(samples), "interval_s": 0.1,
            "oldest_unacked_s": {"p50": pct(ages, 50), "p99": pct(ages, 99),
                                 "max": round(ages[-1], 4) if ages else None},
            "backlog_events": {"p50": pct(backlog, 50), "p99": pct(backlog, 99),
                               "max": backlog[-1] if backlog else None},
            "series": samples}


# --- latency at fixed rates ------------------------------------------------------


def fixed_rate(bench: Bench, mode: str, rate: float, *, pairs: list[tuple[str, str]] | None
               = None) -> dict:
    seconds = bench.sizes.latency_seconds
    # Lock and redeem name their codes' book, as at the peak (suite.py).
    book = bench.pool_book if mode in ("lock", "redeem") else bench.book
    requests = build_requests(bench.api.url, mode, bench.api.token, math.ceil(rate * seconds),
                              book=book, pairs=pairs,
                              tag=f"{bench.tag}{mode}-{int(rate)}-")
    bench.quiet()
    meter = bench.meter()
    if meter:
        meter.start()
    # A request that finds every connection busy waits in the client, and that
    # wait counts in its latency, as it would in the server's accept queue.
    connections = max(bench.sizes.latency_connections,
                      math.ceil(rate / bench.sizes.latency_rate_per_connection))
    out = open_loop(bench.api.url, requests, rate, seconds, connections=connections)
    if meter:
        out["cpu_cores"] = meter.stop()
    lat = out["latency_ms"]
    bench.log(f"{mode} at {rate:,.0f}/s: p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, "
              f"p99.9 {lat.get('p99.9')} ms ({out['statuses']})")
    return out


def hey_check(bench: Bench, rate: float) -> dict | None:
    result = hey(bench.api.url, rate, bench.sizes.latency_seconds)
    if result and "latency_ms" in result:
        lat = result["latency_ms"]
        bench.log(f"hey healthz at {rate:,.0f}/s: p50 {lat['p50']} ms, p99 {lat['p99']} ms")
    return result


# --- the writer ----------------------------------------------------------------------


def drain(bench: Bench) -> dict:
    """Stops the writer, lets the API build a backlog of assigns at full speed,
    restarts the writer and times how fast it empties the backlog."""
    assert bench.stack is not None and bench.outbox is not None
    bench.settle()
    bench.stack.stop_writer()
    produce = run_wrk(bench.api.url, "assign", bench.api.token,
                      seconds=bench.sizes.drain_seconds, threads=bench.sizes.threads,
                      connections=bench.sizes.connections, book=bench.book,
                      tag=f"{bench.tag}backlog-")
    time.sleep(0.2)
    backlog = bench.outbox.backlog(exact=True)
    meter = bench.meter()
    started = time.monotonic()
    bench.stack.start_writer()
    if meter:
        meter.pids["writer"] = bench.stack.procs["writer"].pid
        meter.start()
    first_progress = None
    series = [(0.0, backlog)]
    while True:
        # Exactly until the first batch is in (that marks the start of the
        # drain), then the cheap count: only reaching zero matters.
        left = bench.outbox.backlog(exact=first_progress is None)
        now = time.monotonic() - started
        series.append((round(now, 3), left))
        if first_progress is None and left < backlog:
            first_progress = now
        if left == 0:
            break
        if now > 300:
            raise RuntimeError(f"the writer did not drain {backlog} events in 300 s")
        time.sleep(0.02)
    total = time.monotonic() - started
    working = total - (first_progress or 0.0)
    drain_rate = backlog / working if working > 0 else float("inf")
    drain_rate_with_start = backlog / total
    out = {
        "backlog_events": backlog, "produce": produce.as_dict(),
        "produce_rps": round(produce.rps, 1),
        "writer_start_s": round(first_progress or 0.0, 3),
        "drain_s": round(working, 3), "drain_s_with_start": round(total, 3),
        "drain_events_per_s": round(drain_rate, 1),
        "drain_events_per_s_with_start": round(drain_rate_with_start, 1),
        "ratio": round(drain_rate / produce.rps, 2) if produce.rps else None,
        "ratio_with_start": round(drain_rate_with_start / produce.rps, 2) if produce.rps
        else None,
        "series": series,
    }
    if meter:
        out["cpu_cores"] = meter.stop()
    bench.log(f"writer: backlog {backlog} produced at {produce.rps:,.0f}/s, drained at "
              f"{drain_rate:,.0f}/s ({out['ratio']}x; {out['ratio_with_start']}x counting "
              f"the writer's start)")
    return out
