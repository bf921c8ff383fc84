"""Talking to the service under test: its HTTP API, and (for a local run) its
Redis directly, to read the outbox's consumer-group state."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import redis as redis_sync

from couponsvc.keys import Keys
from couponsvc.outbox import GROUP

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # the service's code alphabet
LAG_COUNT_LIMIT = 1_000
_GAUGE = re.compile(r"^(couponsvc_outbox_\w+) ([0-9.eE+-]+)$", re.M)


@contextlib.contextmanager
def failure_recorded(results: dict) -> Iterator[None]:
    """A failure inside (or Ctrl-C) is printed and kept as `results["error"]`
    instead of raised, so the figures measured before it are still written."""
    try:
        yield
    except BaseException as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.http = httpx.Client(base_url=self.url, timeout=900,
                                 headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self.http.close()

    def _ok(self, response: httpx.Response) -> dict:
        if response.status_code >= 300:
            raise RuntimeError(f"{response.request.method} {response.request.url.path}: "
                               f"{response.status_code} {response.text[:500]}")
        return response.json()

    def create_book(self, name: str, **settings: object) -> dict:
        return self._ok(self.http.post("/coupons", json={"name": name, **settings}))

    def book(self, book_id: str) -> dict:
        return self._ok(self.http.get(f"/coupons/{book_id}"))

    def upload(self, body: bytes, content_type: str = "application/json",
               params: dict[str, str] | None = None) -> tuple[dict, float]:
        """POST /coupons/codes with a pre-encoded body; (result, seconds)."""
        started = time.perf_counter()
        response = self.http.post("/coupons/codes", content=body, params=params,
                                  headers={"Content-Type": content_type})
        seconds = time.perf_counter() - started
        return self._ok(response), seconds

    def generate(self, book_id: str, count: int, pattern: str = "############") -> list[str]:
        codes: list[str] = []
        while len(codes) < count:  # 200,000 a request: well within every limit
            n = min(count - len(codes), 200_000)
            result = self._ok(self.http.post("/coupons/codes", json={
                "couponBookId": book_id, "generate": {"pattern": pattern, "count": n}}))
            codes.extend(result["codes"])
        return codes

    def fill(self, book_id: str, count: int, at_once: int = 2, per_request: int = 200_000,
             pattern: str = "############") -> dict[str, int]:
        """Generates `count` codes into the book, `at_once` requests in flight
        (so the API, Postgres and Redis work side by side); keeps none of the
        codes. A 503 (Redis slow to answer under the load) is retried after its
        Retry-After, a few times. Returns the codes added and the 503s met."""
        retried = [0]

        def one(n: int) -> int:
            body = {"couponBookId": book_id, "generate": {"pattern": pattern, "count": n}}
            with httpx.Client(base_url=self.url, timeout=900,
                              headers={"Authorization": f"Bearer {self.token}"}) as http:
                for _ in range(5):
                    response = http.post("/coupons/codes", json=body)
                    if response.status_code != 503:
                        break
                    retried[0] += 1
                    time.sleep(float(response.headers.get("retry-after", "1")))
                return int(self._ok(response)["added"])

        sizes = [per_request] * (count // per_request) + ([count % per_request]
                                                          if count % per_request else [])
        with ThreadPoolExecutor(at_once) as pool:
            added = sum(pool.map(one, sizes))
        return {"added": added, "retried_503": retried[0]}

    def outbox_gauges(self) -> dict[str, float]:
        text = self.http.get("/metrics").text
        return {name: float(value) for name, value in _GAUGE.findall(text)}


def vacuum_codes(database_url: str) -> float:
    """VACUUM (ANALYZE) of `codes` after a large load, as an operator would
    (docs/deployment.md); the seconds it took. Otherwise autovacuum does it
    in the next minutes, in whichever phase is running then."""
    async def vacuum() -> float:
        conn = await asyncpg.connect(database_url)
        try:
            started = time.monotonic()
            await conn.execute("VACUUM (ANALYZE) codes")
            return round(time.monotonic() - started, 1)
        finally:
            await conn.close()

    return asyncio.run(vacuum())


def rewrite_aof(redis: redis_sync.Redis) -> None:
    """Compacts the AOF now and waits until it is done, so that no automatic
    rewrite lands in a measured phase. One already running (Redis starts one
    by itself as the file grows) is waited for first."""
    while True:
        while redis.info("persistence")["aof_rewrite_in_progress"]:
            time.sleep(0.1)
        try:
            redis.bgrewriteaof()
            break
        except redis_sync.ResponseError as exc:
            if "already in progress" not in str(exc):
                raise
    while redis.info("persistence")["aof_rewrite_in_progress"]:
        time.sleep(0.1)


def write_pairs(path: Path, codes: list[str], user_prefix: str) -> list[tuple[str, str]]:
    pairs = [(code, f"{user_prefix}{i}") for i, code in enumerate(codes)]
    path.write_text("".join(f"{c} {u}\n" for c, u in pairs))
    return pairs


# DEBUG HTSTATS-KEY walks the whole table: check after this many calls.
REHASH_CALLS_PER_CHECK = 20_000


class Outbox:
    """The service's Redis as the bench reads it directly: mostly the writer's
    backlog (entries not yet delivered, the lag, plus delivered but not
    acknowledged, pending, over every book's stream), and the upkeep a
    measurement needs first (finish_rehash)."""

    def __init__(self, redis_url: str, prefix: str = "cb") -> None:
        self.redis = redis_sync.Redis.from_url(redis_url, decode_responses=True)
        self.keys = Keys(prefix)

    def streams(self) -> list[str]:
        return [self.keys.book(int(n)).events for n in self.redis.hvals(self.keys.books)]

    def backlog(self, exact: bool = False) -> int:
        """Events not yet acknowledged. Redis cannot always tell a group's lag
        after entries were trimmed; then the entries past the group's position
        are counted, at most LAG_COUNT_LIMIT per stream unless `exact` (reading
        a 100,000-event backlog every poll would load Redis more than the
        writer being measured does)."""
        total = 0
        for stream in self.streams():
            groups = {g["name"]: g for g in self.redis.xinfo_groups(stream)}
            group = groups.get(GROUP)
            if group is None:
                total += int(self.redis.xlen(stream))
                continue
            lag = group.get("lag")
            if lag is None:
                lag = len(self.redis.xrange(stream, min=f"({group['last-delivered-id']}",
                                            count=None if exact else LAG_COUNT_LIMIT))
            total += int(lag) + int(group["pending"])
        return total

    def finish_rehash(self, book_id: str, limit_s: float = 120.0) -> int | None:
        """Drives Redis's rehash of a book's free set to its end; returns the
        read-only SRANDMEMBER calls it took, or None where `DEBUG HTSTATS-KEY`
        is not allowed (the bench's own Redis allows it, `--enable-debug-command
        local`).

        A set that has just grown by millions (the large book's top-up) is in
        the middle of growing its table, and Redis moves the entries over a
        few at a time, on the operations on that set (its background rehash
        covers the keyspace, not the sets in it). Until then each SPOP samples
        two half-empty tables: 11-13 us instead of 1.5-2.3 for a settled
        5,000,000-code set (measured 2026-11-24). The flat-cost comparison is
        about a book's size, not about the minute after a bulk load."""
        number = self.redis.hget(self.keys.books, book_id)
        assert number is not None, f"no book {book_id}"
        key = self.keys.book(int(number)).free
        calls, deadline = 0, time.monotonic() + limit_s
        try:
            while "rehashing target" in self.redis.execute_command("DEBUG", "HTSTATS-KEY", key):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{key} was still rehashing after {limit_s:.0f} s")
                pipe = self.redis.pipeline(transaction=False)
                for _ in range(REHASH_CALLS_PER_CHECK):
                    pipe.srandmember(key)  # each moves a few buckets, changes nothing
                pipe.execute()
                calls += REHASH_CALLS_PER_CHECK
        except redis_sync.ResponseError as exc:
            if "DEBUG" not in str(exc):
                raise
            return None
        return calls

    def stream_lengths(self) -> int:
        return sum(int(self.redis.xlen(s)) for s in self.streams())

    def wait_drained(self, timeout: float = 120.0, trimmed: bool = False) -> float:
        """Waits until the writer has acknowledged everything (and, with
        `trimmed`, has trimmed the streams); returns the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.backlog() == 0 and (not trimmed or self.stream_lengths() == 0):
                return time.monotonic() - started
            time.sleep(0.05)
        raise RuntimeError(f"the outbox did not drain in {timeout:.0f} s")

    def close(self) -> None:
        self.redis.close()


class Background:
    """Runs `_loop` in a thread of its own between `with` and its end; the
    loop ends when `_stop` is set."""

    def __enter__(self) -> Background:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        raise NotImplementedError


@dataclass
class LagSampler(Background):
    """Samples the writer's lag every `interval` seconds in a thread: the API's
    own gauge (GET /metrics) and, when we can reach Redis, the backlog."""

    api: Api
    outbox: Outbox | None = None
    interval: float = 0.1
    samples: list[dict[str, float]] = field(default_factory=list)

    def __enter__(self) -> LagSampler:
        self._http = httpx.Client(base_url=self.api.url, timeout=5,
                                  headers={"Authorization": f"Bearer {self.api.token}"})
        self._t0 = time.monotonic()
        super().__enter__()
        return self

    def __exit__(self, *_: object) -> None:
        super().__exit__()
        self._http.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic() - self._t0
            sample: dict[str, float] = {"t": round(t, 3)}
            try:
                text = self._http.get("/metrics").text
                gauges = {n: float(v) for n, v in _GAUGE.findall(text)}
                sample["oldest_unacked_s"] = gauges.get("couponsvc_outbox_oldest_unacked_seconds",
                                                        float("nan"))
                sample["metrics_backlog"] = (
                    gauges.get("couponsvc_outbox_lag_events", 0)
                    + gauges.get("couponsvc_outbox_pending_events", 0)
                    if gauges.get("couponsvc_outbox_gauges_up") == 1 else float("nan"))
            except httpx.HTTPError:
                sample["oldest_unacked_s"] = float("nan")
            if self.outbox is not None:
                sample["backlog"] = self.outbox.backlog()
            self.samples.append(sample)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - self._t0 - t)))
