"""`couponsvc verify`: list every difference between Redis and Postgres.

Run it once the outbox is drained (`couponsvc writer --drain`): until then an
event not yet applied is a real difference. Books are compared one by one and
their codes a chunk at a time, in both directions: Postgres's rows (a
server-side cursor) against pipelined Redis look-ups, then Redis's `free` and
`assigned` (SSCAN/HSCAN) against Postgres. Memory stays bounded at any size.

Not compared: createdAt/updatedAt (Redis stamps them with its own clock),
locks and idempotency records (never durable), the outbox streams, and
directory entries of codes Postgres does not have (the directory is read
per code, never listed).
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TextIO

import asyncpg
from redis.asyncio import Redis

from couponsvc.keys import Keys
from couponsvc.mirror import (
    ASSIGNMENT_FIELDS,
    BOOK_COUNTS,
    CHUNK,
    CODES_BOOKS,
    COUNTER_FIELDS,
    SELECT_CODES,
    SETTING_FIELDS,
    Assignment,
    book_number,
    chunks,
    fetch_books,
    meta_settings,
    shown,
)
from couponsvc.records import BookRow

USER_COUNTS = (
    "SELECT owner, count(*) AS codes FROM codes WHERE book_id = $1::uuid AND owner IS NOT NULL"
    " GROUP BY owner ORDER BY owner"
)
ABSENT = "(absent)"


@dataclass(frozen=True, slots=True)
class Difference:
    subject: str  # "code X (book 3)", "book 3 (uuid)", "user U (book 3)"
    what: str  # a field name, or what kind of mismatch
    detail: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.what}: {self.detail}"


ORPHAN_CODES = (
    "SELECT c.book_id::text AS book_id, count(*) AS codes FROM codes c"
    " WHERE NOT EXISTS (SELECT 1 FROM books b WHERE b.id = c.book_id) GROUP BY c.book_id"
)


@dataclass
class Stats:
    books: int = 0
    codes: int = 0


async def differences(redis: Redis, conn: asyncpg.Connection, keys: Keys,
                      stats: Stats | None = None, chunk: int = CHUNK
                      ) -> AsyncGenerator[Difference, None]:
    """Every difference, as it is found. Call inside a transaction (the cursors need one)."""
    stats = stats if stats is not None else Stats()
    postgres = {row.id: row for row in await fetch_books(conn)}
    indexed: dict[str, int] = {}
    for book_id, raw_number in (await redis.hgetall(keys.books)).items():
        if (number := book_number(raw_number)) is None:  # corrupted: said, then skipped
            yield Difference(f"book {book_id!s}", keys.books,
                             f"redis={raw_number!r} is not a book number")
        else:
            indexed[str(book_id)] = number
    raw_seq = await redis.get(keys.book_seq)
    seq = str(raw_seq) if raw_seq is not None else ABSENT
    highest = max((row.num for row in postgres.values()), default=0)
    last_handed_out = book_number(raw_seq)
    if raw_seq is not None and last_handed_out is None:
        yield Difference("books", keys.book_seq, f"redis={seq!r} is not a book number")
    elif highest and (last_handed_out is None or last_handed_out < highest):
        yield Difference("books", keys.book_seq,
                         f"redis={seq} is below the highest book number {highest}")
    # codes.book_id has no foreign key (bulk-load speed), so look for orphans here.
    for orphan in await conn.fetch(ORPHAN_CODES):
        yield Difference(f"book {orphan['book_id']}", "codes",
                         f"{orphan['codes']} code(s) in Postgres belong to no book")
    ordered = sorted(postgres.keys() | indexed.keys(),
                     key=lambda i: indexed.get(i) or postgres[i].num)
    for book_id in ordered:
        row = postgres.get(book_id)
        number = indexed[book_id] if book_id in indexed else postgres[book_id].num
        stats.books += 1
        for difference in await _book(redis, conn, keys, book_id, number, row, indexed):
            yield difference
        async for difference in _postgres_codes(redis, conn, keys, book_id, number, stats,
                                                chunk):
            yield difference
        async for difference in _redis_codes(redis, conn, keys, book_id, number, chunk):
            yield difference
        async for difference in _users(redis, conn, keys, book_id, number, chunk):
            yield difference


async def _book(redis: Redis, conn: asyncpg.Connection, keys: Keys, book_id: str, number: int,
                row: BookRow | None, indexed: dict[str, int]) -> list[Difference]:
    subject = f"book {number} ({book_id})"
    if row is None:
        return [Difference(subject, "only in redis", "postgres has no such book")]
    meta = {str(k): str(v) for k, v in (await redis.hgetall(keys.book(number).meta)).items()}
    found: list[Difference] = []
    if book_id not in indexed:
        found.append(Difference(subject, "only in postgres", f"not in {keys.books}"))
    elif indexed[book_id] != row.num:
        found.append(Difference(subject, "num", f"redis={indexed[book_id]} postgres={row.num}"))
    if not meta:
        found.append(Difference(subject, "meta", f"{keys.book(number).meta} is missing"))
        return found
    expected = meta_settings(row)
    for name in SETTING_FIELDS:
        if meta.get(name) != expected.get(name):
            found.append(Difference(subject, name, f"redis={meta.get(name, ABSENT)}"
                                                   f" postgres={expected.get(name, ABSENT)}"))
    counts = await conn.fetchrow(BOOK_COUNTS, book_id)
    for name in COUNTER_FIELDS:
        if meta.get(name) != str(counts[name]):
            found.append(Difference(subject, name,
                                    f"redis={meta.get(name, ABSENT)} postgres={counts[name]}"))
    return found


async def _postgres_codes(redis: Redis, conn: asyncpg.Connection, keys: Keys, book_id: str,
                          number: int, stats: Stats, chunk: int) -> AsyncIterator[Difference]:
    """Each codes row of the book against Redis: state, fields, directory, user index."""
    book = keys.book(number)
    # By owner, so a chunk checks each owner's codes with one ZMSCORE; the free
    # set and assigned hash take one command per chunk, the directory one per code.
    async for rows in chunks(conn, f"{SELECT_CODES} ORDER BY owner, code", book_id, size=chunk):
        codes = [row["code"] for row in rows]
        by_owner: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            if row["owner"] is not None:
                by_owner[row["owner"]].append(row["code"])
        async with redis.pipeline(transaction=False) as pipe:
            pipe.smismember(book.free, codes)
            pipe.hmget(book.assigned, codes)
            for owner, owned in by_owner.items():
                pipe.zmscore(book.user(owner), owned)
            for code in codes:
                pipe.hget(keys.directory(code), code)
            replies = await pipe.execute()
        free, assigned = replies[0], replies[1]
        scored, entries = replies[2:2 + len(by_owner)], replies[2 + len(by_owner):]
        indexed = {code for owned, scores in zip(by_owner.values(), scored, strict=True)
                   for code, score in zip(owned, scores, strict=True) if score is not None}
        for at, row in enumerate(rows):
            stats.codes += 1
            in_index = row["owner"] is None or row["code"] in indexed
            for difference in _compare_code(keys, number, row, bool(free[at]), assigned[at],
                                            entries[at], in_index):
                yield difference


def _compare_code(keys: Keys, number: int, row: Any, free: bool, raw: str | None,
                  entry: str | None, indexed: bool) -> list[Difference]:
    code, owner = row["code"], row["owner"]
    subject = f"code {code} (book {number})"
    pg_state = "free" if owner is None else f"assigned to {owner}"
    found: list[Difference] = []
    if entry is None:
        found.append(Difference(subject, "directory", f"no entry in {keys.directory(code)}"))
    elif entry != str(number):
        found.append(Difference(subject, "directory", f"points to book {entry}"))
    if raw is not None and free:
        found.append(Difference(subject, "state", "both free and assigned in redis"))
    if raw is None and not free:
        found.append(Difference(subject, "only in postgres", pg_state))
    elif raw is None:
        if owner is not None:
            found.append(Difference(subject, "state", f"redis=free postgres={pg_state}"))
    elif owner is None:
        found.append(Difference(subject, "state", f"redis=assigned ({raw}) postgres=free"))
    else:
        found.extend(_compare_assignment(subject, raw, Assignment.of_row(row)))
        if not indexed:
            found.append(Difference(subject, "user index",
                                    f"not in {keys.book(number).user(owner)}"))
    return found


def _compare_assignment(subject: str, raw: str, expected: Assignment) -> list[Difference]:
    try:
        actual = Assignment.decode(raw)
    except ValueError:
        return [Difference(subject, "assigned", f"malformed value {raw!r} in redis")]
    found: list[Difference] = []
    for name, attribute in ASSIGNMENT_FIELDS:
        mine, theirs = getattr(actual, attribute), getattr(expected, attribute)
        if mine != theirs:
            found.append(Difference(subject, name,
                                    f"redis={shown(name, mine)} postgres={shown(name, theirs)}"))
    return found


async def _redis_codes(redis: Redis, conn: asyncpg.Connection, keys: Keys, book_id: str,
                       number: int, chunk: int) -> AsyncIterator[Difference]:
    """The book's codes in Redis that Postgres lacks, or files under another book
    (those Postgres has for this book were compared row by row already)."""
    book = keys.book(number)
    cursor = 0
    while True:  # the free set
        cursor, members = await redis.sscan(book.free, cursor, count=chunk)
        states = {str(m): "free" for m in members}
        for difference in await _elsewhere(conn, book_id, number, states):
            yield difference
        if cursor == 0:
            break
    while True:  # the assigned hash
        cursor, entries = await redis.hscan(book.assigned, cursor, count=chunk)
        assert isinstance(entries, dict)  # with values, HSCAN answers a mapping
        states = {str(code): f"assigned ({raw!s})" for code, raw in entries.items()}
        for difference in await _elsewhere(conn, book_id, number, states):
            yield difference
        if cursor == 0:
            break


async def _elsewhere(conn: asyncpg.Connection, book_id: str, number: int,
                     states: dict[str, str]) -> list[Difference]:
    if not states:
        return []
    rows = await conn.fetch(CODES_BOOKS, list(states))
    where = {row["code"]: (row["book_id"], row["num"]) for row in rows}
    found: list[Difference] = []
    for code in sorted(states):
        subject = f"code {code} (book {number})"
        if code not in where:
            found.append(Difference(subject, "only in redis", states[code]))
        elif where[code][0] != book_id:
            found.append(Difference(subject, "book", f"postgres has it in book {where[code][1]}"))
    return found


async def _users(redis: Redis, conn: asyncpg.Connection, keys: Keys, book_id: str,
                 number: int, chunk: int) -> AsyncIterator[Difference]:
    """Each owner's per-book zset (maxPerUser counts it) and books index."""
    book = keys.book(number)
    async for rows in chunks(conn, USER_COUNTS, book_id, size=chunk):
        async with redis.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.zcard(book.user(row["owner"]))
                pipe.sismember(keys.user_books(row["owner"]), str(number))
            replies = iter(await pipe.execute())
        for row in rows:
            held, listed = next(replies), next(replies)
            subject = f"user {row['owner']} (book {number})"
            if held != row["codes"]:
                yield Difference(subject, "codes", f"redis={held} postgres={row['codes']}"
                                                   f" ({book.user(row['owner'])})")
            if not listed:
                yield Difference(subject, "books index",
                                 f"{number} not in {keys.user_books(row['owner'])}")


async def collect(redis: Redis, conn: asyncpg.Connection, keys: Keys,
                  chunk: int = CHUNK) -> list[Difference]:
    """Every difference in a list (tests, small deployments)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return [d async for d in differences(redis, conn, keys, chunk=chunk)]


async def report(redis: Redis, conn: asyncpg.Connection, keys: Keys, limit: int = 0,
                 out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Prints each difference on `out` and a summary on `err` (default: stdout
    and stderr as they are now); the exit status: 0 when Redis and Postgres
    agree, 1 when they do not."""
    out, err = out or sys.stdout, err or sys.stderr
    started, stats, count = time.perf_counter(), Stats(), 0
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async with aclosing(differences(redis, conn, keys, stats)) as found:
            async for difference in found:
                print(difference, file=out)
                count += 1
                if limit and count >= limit:
                    print(f"verify: stopped after --limit {limit}", file=err)
                    break
    print(f"verify: {count} difference(s); {stats.books} book(s), {stats.codes} code(s)"
          f" compared in {time.perf_counter() - started:.1f} s", file=err)
    return 1 if count else 0
