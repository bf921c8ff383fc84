"""The write-behind writer: drains every book's outbox stream into Postgres.

Each pass reads a batch per stream through one consumer group, applies it in
one transaction with idempotent statements (events are keyed by their stream
id; a code's row only moves to a higher version), and only then `XACK`s. So a
redelivered, reclaimed or out-of-order event changes nothing, and a writer
killed at any point loses nothing: its unacknowledged entries are reclaimed
by `XAUTOCLAIM` once idle. Several writers may run at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError, ResponseError

from couponsvc.keys import BookKeys, Keys
from couponsvc.metrics import WriterMetrics
from couponsvc.outbox import GROUP, Event, apply_events, parse_entries
from couponsvc.scripts import Scripts
from couponsvc.visits import Visits

log = logging.getLogger("couponsvc.writer")

# Ended locks recorded per script call, and calls per book per sweep: up to
# 16,000 expiries a second per book.
SWEEP_SLICE = 1000
SWEEP_SLICES = 16
# Books per pipelined round trip when the writer looks for work, and the
# entries it reads from each there: enough to tell work is waiting, few
# enough that thousands of books' worth stays small (the batch itself is
# read afterwards, one book at a time).
PROBE_CHUNK = 1000
PROBE_COUNT = 16
# The list of books is read again when its length changes, and at least this often.
BOOK_LIST_MAX_AGE_S = 5.0

# Error classes (SQLSTATE's first two characters) that can come from an
# event's own data: a data exception (22), a constraint it breaks (23), a
# value past a limit (54). Only these count towards parking an event.
EVENT_AT_FAULT = frozenset({"22", "23", "54"})


class PostgresNotNow(Exception):
    """Postgres refused a batch for a reason that is not the events' own (a
    lock timeout, a read-only or unprivileged session, a serialization
    failure): the writer pauses and retries; no event counts an attempt."""


# Postgres errors that say "not now" rather than "never": retry, do not count.
TRANSIENT = (
    PostgresNotNow,
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    # A pooled connection that Postgres is closing (MagicStack/asyncpg#784).
    asyncpg.InternalClientError,
    # Batches are applied so as not to deadlock (outbox.UPSERT_CODES); should
    # one still be chosen as a victim, retry it whole, not event by event.
    asyncpg.exceptions.DeadlockDetectedError,
)


@dataclass
class WriterConfig:
    # Measured on the bench's drain: 2,000 a batch drained about 15% faster
    # than 1,000 (fewer commits and round trips); 4,000 no faster.
    batch_size: int = 2000
    # Batches of one stream in flight at once while its backlog is deep.
    # Memory: each batch in flight holds about 2 KB an event (the reply, the
    # events, their JSON), and the process keeps that high-water mark once a
    # deep backlog has reached it: measured +17 MB at 4 x 2,000, +5 MB at
    # 1 x 2,000, +3 MB at 4 x 500, flat through later backlogs.
    parallel_batches: int = 4
    # Batches of one stream per pass before the writer moves on to other books.
    batches_per_pass: int = 32
    claim_idle_ms: int = 10_000  # a consumer silent this long is presumed dead
    max_attempts: int = 5  # then an event is parked in parked_events
    idle_sleep_s: float = 0.02
    # After a pass that found less than a full batch, wait this long for more:
    # fewer, larger transactions cost Postgres and Redis far less per event
    # (one commit, one XACK, one XREADGROUP for many events) and leave the CPU
    # to the hot path; a backlog is still drained without pause.
    linger_s: float = 0.05
    trim_interval_s: float = 5.0
    # A stream Postgres refuses for now (PostgresNotNow) is left alone this
    # long, doubling up to the most while it lasts; the other books go on.
    not_now_pause_s: float = 0.1
    not_now_pause_max_s: float = 5.0
    # How often every book's ended locks are recorded (expire_locks.lua): the
    # most a lock_expired event waits to be written, when nothing else in
    # its book records it sooner.
    lock_sweep_interval_s: float = 1.0
    # A quiet book (its last read found nothing) is read again after a tenth
    # of how long it has been quiet (visits.QUIET_SHARE), at least idle_sleep_s
    # and at most this: the longest its first new event waits. Busy books are
    # read on every pass.
    quiet_read_max_s: float = 0.5
    # Every book's locks are swept this often whatever this writer saw: a
    # lock whose event another writer applied (and then died) is recorded
    # within this long of its end.
    full_lock_sweep_interval_s: float = 60.0
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")


@dataclass
class _Batches:
    """The batches of one stream's pass: those in flight, and the tally of
    those that finished."""

    batch_size: int
    in_flight: set[asyncio.Future[tuple[bool, int]]] = field(default_factory=set)
    started: int = 0
    more: bool = True  # the last batch read was full: the backlog may go on
    settled: bool = True  # every finished batch was applied or parked, all of it
    applied: int = 0
    failure: BaseException | None = None

    def start(self, settle: Coroutine[Any, Any, tuple[bool, int]], size: int) -> None:
        self.in_flight.add(asyncio.ensure_future(settle))
        self.started += 1
        self.more = size >= self.batch_size

    async def wait_one(self) -> None:
        """Waits until at least one batch in flight finishes, and tallies it."""
        done, self.in_flight = await asyncio.wait(self.in_flight,
                                                  return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if (error := task.exception()) is not None:
                self.failure = self.failure or error
                continue
            batch_settled, batch_applied = task.result()
            self.settled &= batch_settled
            self.applied += batch_applied

    def cancel_all(self) -> None:
        """Stops the batches in flight: their transactions roll back and their
        entries stay pending, to be read again."""
        for task in self.in_flight:
            task.cancel()


class Writer:
    def __init__(self, redis: Redis, pool: asyncpg.Pool, keys: Keys,
                 config: WriterConfig | None = None, metrics: WriterMetrics | None = None,
                 scripts: Scripts | None = None) -> None:
        self.redis = redis
        self.pool = pool
        self.keys = keys
        self.config = config or WriterConfig()
        self.metrics = metrics
        self._groups: set[str] = set()
        self._retry_own: set[str] = set()  # streams whose pending entries to read again
        self._attempts: dict[tuple[str, str], int] = {}
        self._last_trim = 0.0
        self._scripts = scripts  # made on first use (sweeps only)
        cfg = self.config
        self._visits = Visits(first_gap=cfg.idle_sleep_s, max_gap=cfg.quiet_read_max_s,
                              sweep_every=cfg.lock_sweep_interval_s,
                              full_sweep_every=cfg.full_lock_sweep_interval_s)
        self._visit_all = False  # drain(): every book on every pass
        self._numbers: list[int] = []
        self._numbers_read_at = -BOOK_LIST_MAX_AGE_S
        self._last_claim: dict[str, float] = {}
        self._paused: dict[str, tuple[float, float]] = {}  # stream: (until, for how long)

    async def run(self, stop: asyncio.Event) -> None:
        """Drains until `stop` is set; finishes the batch in hand first."""
        log.info("writer %s started", self.config.consumer)
        backoff = 0.1
        while not stop.is_set():
            try:
                applied = await self.step()
                backoff = 0.1
            except (RedisError, *TRANSIENT) as exc:
                log.warning("writer paused: %s", exc)
                applied, backoff = 0, min(backoff * 2, 5.0)
                await _sleep_unless(stop, backoff)
                continue
            except Exception:
                # A bug must not stop the drain of every book: nothing unapplied
                # was acknowledged, so log it loudly, back off and try again.
                log.exception("writer pass failed; retrying")
                applied, backoff = 0, min(backoff * 2, 5.0)
                await _sleep_unless(stop, backoff)
                continue
            if applied == 0:
                await _sleep_unless(stop, self.config.idle_sleep_s)
            elif applied < self.config.batch_size:
                await _sleep_unless(stop, self.config.linger_s)
        log.info("writer %s stopped", self.config.consumer)

    async def step(self) -> int:
        """One pass: reads the books that are due (`Visits`) in pipelined round
        trips and drains those that had entries, one book after another; then
        sweeps the locks and trims the streams that are due. Returns how many
        events were applied, plus the lock expiries recorded (events for the
        next pass)."""
        numbers = await self._book_numbers()
        visits = self._visits
        applied = 0
        due = numbers if self._visit_all else visits.reads_due(numbers)
        for number in await self._books_with_work(due):
            applied += await self._drain_unless_paused(self.keys.book(number).events)
        sweeps = numbers if self._visit_all else visits.sweeps_due(numbers)
        if sweeps:
            # Side by side: the calls share pipelined batches, not a round trip each.
            swept = await asyncio.gather(*(self._sweep(n) for n in sweeps))
            applied += sum(swept)
        if time.monotonic() - self._last_trim > self.config.trim_interval_s:
            self._last_trim = time.monotonic()
            for number in numbers if self._visit_all else visits.trims_due(numbers):
                try:
                    await trim_acknowledged(self.redis, self.keys.book(number).events)
                except ResponseError as exc:  # that book's stream only (as _probe does)
                    log.warning("writer could not trim book %d: %s", number, exc)
                    continue
                visits.trimmed(number)
        return applied

    async def _book_numbers(self) -> list[int]:
        """Every book's number, read again when the list's length changed (a
        new book) or it is older than BOOK_LIST_MAX_AGE_S."""
        stale = time.monotonic() - self._numbers_read_at > BOOK_LIST_MAX_AGE_S
        if stale or self._visit_all \
                or await self.redis.hlen(self.keys.books) != len(self._numbers):
            self._numbers = sorted(int(n) for n in await self.redis.hvals(self.keys.books))
            self._numbers_read_at = time.monotonic()
            self._visits.forget_others(self._numbers)
        return self._numbers

    async def _books_with_work(self, numbers: Sequence[int]) -> list[int]:
        """The books whose streams have entries for this writer: ours left
        unacknowledged, a dead writer's (XAUTOCLAIM, now and then) or new ones.
        Asks PROBE_CHUNK books a round trip; what it reads there is pending to
        this writer, and the drain reads it again with the rest of its batch.
        Streams Postgres refused for now are left out."""
        found: list[int] = []
        numbers = [n for n in numbers if not self._is_paused(self.keys.book(n).events)]
        for start in range(0, len(numbers), PROBE_CHUNK):
            found += await self._probe(numbers[start:start + PROBE_CHUNK])
        return found

    async def _probe(self, numbers: Sequence[int]) -> list[int]:
        cfg = self.config
        plans: list[tuple[int, str, list[str]]] = []  # number, stream, what was asked
        async with self.redis.pipeline(transaction=False) as pipe:
            for number in numbers:
                stream = self.keys.book(number).events
                node = self._node_of(stream)
                asked = []
                if stream not in self._groups:
                    pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
                    asked.append("group")
                if stream in self._retry_own:
                    pipe.execute_command(*self._read_args(stream, "0", PROBE_COUNT), **node)
                    asked.append("own")
                elif self._claim_due(stream):
                    pipe.xautoclaim(stream, GROUP, cfg.consumer, cfg.claim_idle_ms, "0-0",
                                    count=PROBE_COUNT)
                    asked.append("claim")
                pipe.execute_command(*self._read_args(stream, ">", PROBE_COUNT), **node)
                asked.append("new")
                plans.append((number, stream, asked))
            replies = iter(await pipe.execute(raise_on_error=False))
        found: list[int] = []
        failed: list[tuple[int, Exception]] = []
        for number, stream, asked in plans:
            entries = 0
            error: Exception | None = None
            for what in asked:
                reply = next(replies)
                if isinstance(reply, ResponseError) and "NOGROUP" in str(reply):
                    # The group vanished with the data (a Redis lost, restarted
                    # empty or flushed): create it again on the next pass.
                    self._groups.discard(stream)
                elif isinstance(reply, ResponseError) and "BUSYGROUP" in str(reply):
                    self._groups.add(stream)
                elif isinstance(reply, Exception):
                    # A refused XGROUP CREATE (Redis out of memory, while reads
                    # and XACK, which free it, still work) shows in the reads.
                    if what != "group" and error is None:
                        error = reply
                elif what == "group":
                    self._groups.add(stream)
                elif what == "claim":
                    entries += len(reply[1])
                    if reply[1]:  # a dead writer's backlog: the drain takes more of it
                        self._last_claim.pop(stream, None)
                else:
                    self._groups.add(stream)  # a read answered: the group exists
                    entries += len(_entries_of(reply))
            if error is not None:
                failed.append((number, error))
                self._visits.read(number, found=False)
            elif entries:
                self._retry_own.add(stream)  # pending to us now, until settled
                self._visits.had_events(number)
                self._visits.read(number, found=True)
                found.append(number)
            else:
                self._retry_own.discard(stream)
                self._visits.read(number, found=False)
        if failed:
            if len(failed) == len(plans):
                raise failed[0][1]  # nothing answered: the writer pauses and logs it
            log.warning("writer skipped %d of %d books this pass; book %d: %s",
                        len(failed), len(plans), failed[0][0], failed[0][1])
        return found

    def _node_of(self, stream: str) -> dict[str, Any]:
        """On a cluster, the node a stream lives on: redis-py otherwise asks a
        node where XREADGROUP's key is (COMMAND GETKEYS), a round trip each."""
        if not isinstance(self.redis, RedisCluster):
            return {}
        return {"target_nodes": self.redis.get_node_from_key(stream)}

    async def _sweep(self, number: int) -> int:
        recorded, more, next_end_in_ms = await self._sweep_locks(self.keys.book(number))
        self._visits.swept(number, more, next_end_in_ms)
        return recorded

    async def record_expired_locks(self, book: BookKeys) -> int:
        """Records the book's ended locks (as lock_expired events); returns how many."""
        recorded, _, _ = await self._sweep_locks(book)
        return recorded

    async def _sweep_locks(self, book: BookKeys) -> tuple[int, bool, int | None]:
        """Records the book's ended locks a slice per script call (each call
        holds Redis for a moment only), at most SWEEP_SLICES slices. Returns
        how many, whether ended ones were left for later, and the time until
        the next lock left ends (None: no lock left)."""
        if self._scripts is None:
            self._scripts = Scripts(self.redis)
        total = 0
        for _ in range(SWEEP_SLICES):
            reply: Any = await self._scripts.run(
                "expire_locks", [book.meta, book.assigned, book.locks, book.events],
                [SWEEP_SLICE])
            recorded, next_end_in_ms = int(reply[0]), int(reply[1])
            total += recorded
            if recorded < SWEEP_SLICE:
                return total, False, None if next_end_in_ms < 0 else next_end_in_ms
        return total, True, 0

    async def drain(self, timeout_s: float = 60.0) -> None:
        """Applies everything now in the streams, reclaiming any pending entry,
        and the expiry of every lock that has ended by now."""
        deadline = time.monotonic() + timeout_s
        saved = self.config.claim_idle_ms
        self.config.claim_idle_ms = 0
        self._visit_all = True  # a book may have more than a sweep's slices
        try:
            while True:
                if not (await self.step() or await self._pending_anywhere()):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError("the outbox did not drain in time")
                if self._paused:
                    await asyncio.sleep(self.config.idle_sleep_s)
        finally:
            self.config.claim_idle_ms = saved
            self._visit_all = False

    async def _pending_anywhere(self) -> bool:
        # The books this pass read (drain() re-reads the list on every pass).
        for number in self._numbers:
            stream = self.keys.book(number).events
            if stream in self._groups and (await self.redis.xpending(stream, GROUP))["pending"]:
                return True
        return False

    def _is_paused(self, stream: str) -> bool:
        """Postgres refused the stream for now a moment ago: a lock held on
        one book's rows must not hold up every other book."""
        paused = self._paused.get(stream)
        return paused is not None and time.monotonic() < paused[0]

    async def _drain_unless_paused(self, stream: str) -> int:
        """Drains a stream, pausing it when Postgres refuses it for now."""
        if self._is_paused(stream):
            return 0
        paused = self._paused.get(stream)
        try:
            applied = await self._drain_stream(stream)
        except PostgresNotNow as exc:
            pause = self.config.not_now_pause_s if paused is None \
                else min(paused[1] * 2, self.config.not_now_pause_max_s)
            self._paused[stream] = (time.monotonic() + pause, pause)
            log.warning("writer paused on %s for %.1f s: %s", stream, pause, exc)
            return 0
        self._paused.pop(stream, None)
        return applied

    async def _drain_stream(self, stream: str) -> int:
        await self._ensure_group(stream)
        try:
            return await self._drain_group(stream)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The group vanished with the data (a Redis lost, restarted empty or
            # flushed): create it again on the next pass.
            self._groups.discard(stream)
            return 0

    async def _drain_group(self, stream: str) -> int:
        """Applies the next batch of a stream; while its backlog is deep, keeps
        up to `parallel_batches` batches in flight, each in its own transaction
        on its own connection, reading the next batch as soon as one is
        settled, so Postgres always has work while a batch is read, parsed or
        committed. A pass takes at most `batches_per_pass` batches of a
        stream, then moves on to the next book. Batch order does not matter:
        every statement is idempotent and a code only moves to a higher
        version."""
        first, more_of_ours = await self._next_entries(stream)
        if not first:
            return 0
        self._retry_own.add(stream)  # until every batch is settled
        batches = _Batches(self.config.batch_size)
        batches.start(self._settle(stream, first), len(first))
        try:
            while True:
                await self._start_more(stream, batches)
                if not batches.in_flight:
                    break  # every batch finished and no more are due this pass
                await batches.wait_one()
        finally:
            batches.cancel_all()  # none left, unless cancelled (or a bug) mid-pass
        if batches.failure is not None:
            raise batches.failure  # only now that no batch is still running
        if batches.settled and not more_of_ours:
            self._retry_own.discard(stream)
        return batches.applied

    async def _start_more(self, stream: str, batches: _Batches) -> None:
        """Reads and starts further batches while the last one read was full
        (the backlog may go on), up to `parallel_batches` in flight and
        `batches_per_pass` in all."""
        cfg = self.config
        while batches.more and batches.failure is None \
                and len(batches.in_flight) < cfg.parallel_batches \
                and batches.started < cfg.batches_per_pass:
            try:
                entries = await self._read_new(stream)
            except RedisError as exc:
                batches.failure = exc
                return
            if not entries:
                batches.more = False
                return
            batches.start(self._settle(stream, entries), len(entries))

    async def _next_entries(self, stream: str) -> tuple[list[Any], bool]:
        """A batch: our own unacknowledged entries (after a failed attempt, or
        read by the probe), then a dead writer's (XAUTOCLAIM, now and then),
        then new ones, up to batch_size. Also says whether ours filled it:
        more of ours may then be left for the next pass."""
        cfg = self.config
        entries: list[Any] = []
        if stream in self._retry_own:
            entries = await self._read(stream, "0", cfg.batch_size)
        more_of_ours = len(entries) >= cfg.batch_size
        if not more_of_ours and self._claim_due(stream):
            claimed = await self.redis.xautoclaim(stream, GROUP, cfg.consumer, cfg.claim_idle_ms,
                                                  "0-0", count=cfg.batch_size - len(entries))
            if claimed[1]:  # a dead writer's backlog: take the rest of it next pass
                self._last_claim.pop(stream, None)
            # XAUTOCLAIM takes idle entries of ours too: keep one of each.
            ours = {entry[0] for entry in entries}
            entries += [entry for entry in claimed[1] if entry[0] not in ours]
        if len(entries) < cfg.batch_size:
            entries += await self._read_new(stream, cfg.batch_size - len(entries))
        return entries, more_of_ours

    async def _read_new(self, stream: str, count: int | None = None) -> list[Any]:
        """The next batch (or `count` entries) no consumer of the group has been given yet."""
        return await self._read(stream, ">", count or self.config.batch_size)

    async def _read(self, stream: str, start: str, count: int) -> list[Any]:
        """XREADGROUP of one stream: ">" new entries, "0" our own unacknowledged."""
        return _entries_of(await cast(Any, self.redis).execute_command(
            *self._read_args(stream, start, count), **self._node_of(stream)))

    def _read_args(self, stream: str, start: str, count: int) -> tuple[Any, ...]:
        return ("XREADGROUP", "GROUP", GROUP, self.config.consumer, "COUNT", count,
                "STREAMS", stream, start)

    def _claim_due(self, stream: str) -> bool:
        """Whether to look for a dead writer's entries now: an entry is only
        reclaimable after `claim_idle_ms`, so looking a few times per period is
        enough (the scan of the pending list is not free on every pass)."""
        now = time.monotonic()
        every = self.config.claim_idle_ms / 4000
        if now - self._last_claim.get(stream, -every) < every:
            return False
        self._last_claim[stream] = now
        return True

    async def _settle(self, stream: str, entries: Sequence[Any]) -> tuple[bool, int]:
        """Applies one batch; returns whether all of it is settled (applied or
        parked) and how many events were applied."""
        events, bad = parse_entries(stream, entries)
        settled, applied = await self._apply(stream, events) if events else (True, 0)
        for entry in bad:
            settled &= await self._failed(stream, entry.event, entry.problem)
        return settled, applied

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    async def _apply(self, stream: str, events: Sequence[Event]) -> tuple[bool, int]:
        """Applies events in one transaction, or one by one when Postgres
        refuses the batch for an event's data; returns whether all are settled
        (applied or parked) and how many were applied."""
        started = time.perf_counter()
        try:
            async with self.pool.acquire() as conn:
                await apply_events(conn, events)
        except TRANSIENT:
            raise
        except asyncpg.PostgresError as exc:
            await self._raise_unless_events_at_fault(exc)
            log.error("batch of %d from %s failed (%s); applying one by one",
                      len(events), stream, exc)
            return await self._apply_one_by_one(stream, events)
        await self.redis.xack(stream, GROUP, *(e.id for e in events))
        if self.metrics is not None:
            self.metrics.observe_batch(len(events), time.perf_counter() - started)
        return True, len(events)

    async def _apply_one_by_one(self, stream: str, events: Sequence[Event]) -> tuple[bool, int]:
        settled, applied = True, 0
        for event in events:
            try:
                async with self.pool.acquire() as conn:
                    await apply_events(conn, [event])
            except TRANSIENT:
                raise
            except asyncpg.PostgresError as exc:
                await self._raise_unless_events_at_fault(exc)
                settled &= await self._failed(stream, event, str(exc))
                continue
            await self.redis.xack(stream, GROUP, event.id)
            applied += 1
        return settled, applied

    async def _raise_unless_events_at_fault(self, exc: asyncpg.PostgresError) -> None:
        """Raises PostgresNotNow unless the error can be the events' own. The
        pool's sessions are replaced first: one opened while the database was
        read-only, or with a setting since changed, would fail the same way
        for as long as it lived."""
        if str(exc.sqlstate)[:2] in EVENT_AT_FAULT:
            return
        await self.pool.expire_connections()
        raise PostgresNotNow(f"{type(exc).__name__}: {exc}") from exc

    async def _failed(self, stream: str, event: Event, error: str) -> bool:
        """Counts a failed attempt; parks and acknowledges the event at the last
        one. Returns whether the event is settled (parked)."""
        key = (stream, event.id)
        self._attempts[key] = attempts = self._attempts.get(key, 0) + 1
        if attempts < self.config.max_attempts:
            return False  # stays pending; retried on a later pass
        await self._park(event, error, attempts)
        self._attempts.pop(key, None)
        await self.redis.xack(stream, GROUP, event.id)
        return True

    async def _park(self, event: Event, error: str, attempts: int) -> None:
        log.error("parking event %s of %s after %d attempts: %s",
                  event.id, event.stream, attempts, error)
        try:
            await self.pool.execute(
                "INSERT INTO parked_events (stream, stream_id, book_id, fields, error, attempts)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                event.stream, event.id, event.fields.get("book", "").replace("\x00", ""),
                event.fields_json(), error.replace("\x00", ""), attempts)
        except asyncpg.PostgresError as exc:
            await self._raise_unless_events_at_fault(exc)
            raise
        if self.metrics is not None:
            self.metrics.parked.inc()


async def trim_acknowledged(redis: Redis, stream: str) -> None:
    """Removes the entries every consumer group has acknowledged, and no other."""
    groups = await redis.xinfo_groups(stream)
    if not groups:
        return
    floor: str | None = None
    for group in groups:
        summary = await redis.xpending(stream, group["name"]) if group["pending"] else None
        if summary is not None and summary["min"] is not None:
            candidate = str(summary["min"])
        else:
            ms, _, seq = str(group["last-delivered-id"]).partition("-")
            candidate = f"{ms}-{int(seq or 0) + 1}"
        if floor is None or _id_key(candidate) < _id_key(floor):
            floor = candidate
    if floor is not None:
        # Exact: an approximate trim (redis-py's default) removes at most
        # 10,000 entries a call, less than a busy book writes between trims.
        await redis.xtrim(stream, minid=floor, approximate=False)


def _entries_of(reply: Any) -> list[Any]:
    """The entries of a one-stream XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3: {stream: [entries]}, as redis-py 8 parses it
        entries = next(iter(reply.values()))
        if entries and isinstance(entries[0], list):
            entries = entries[0]
        return list(entries)
    return list(reply[0][1])


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
