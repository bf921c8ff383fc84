"""`couponsvc inspect`: one code or one book, Redis and Postgres side by side.

For an operator on call: every row shows what each side holds, and rows that
should agree but do not are marked. Read-only on both sides; lock tokens are
credentials, so only their presence is shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from couponsvc.keys import Keys, directory_bucket
from couponsvc.mirror import (
    ASSIGNMENT_FIELDS,
    BOOK_COUNTS,
    SETTING_FIELDS,
    Assignment,
    book_number,
    fetch_books,
    iso,
    meta_settings,
    shown,
    to_ms,
)
from couponsvc.records import BookRow

NONE = "-"
NOT_DURABLE = "(not durable)"
DIFFERS = "<- differs"
CODE_ROW = (
    "SELECT c.code, c.book_id::text AS book_id, b.num, c.owner, c.assigned_at,"
    " c.times_redeemed, c.last_redeemed_at, c.version, c.added_at"
    " FROM codes c JOIN books b ON b.id = c.book_id WHERE c.code = $1"
)
LAST_EVENTS = (
    "SELECT stream_id, type, user_id, at, version, detail FROM events"
    " WHERE code = $1 ORDER BY at DESC, stream_id DESC LIMIT 10"
)
TIME_FIELDS = ("validFrom", "validUntil", "createdAt", "updatedAt")


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    redis: str
    postgres: str
    compare: bool = True  # mark the row when the two sides differ


def table(title: str, rows: list[Row]) -> list[str]:
    width = max(len(r.label) for r in rows)
    left = max(len("redis"), *(len(r.redis) for r in rows))
    right = max(len("postgres"), *(len(r.postgres) for r in rows))
    lines = [title, f"  {'':<{width}}  {'redis':<{left}}  postgres"]
    for r in rows:
        mark = DIFFERS if r.compare and r.redis != r.postgres else ""
        lines.append(f"  {r.label:<{width}}  {r.redis:<{left}}  {r.postgres:<{right}}  {mark}"
                     .rstrip())
    return lines


async def inspect_code(redis: Redis, conn: asyncpg.Connection, keys: Keys,
                       code: str) -> str | None:
    """The report for one code, or None when neither side knows it."""
    bucket = keys.directory(code)
    entry = await redis.hget(bucket, code)
    row = await conn.fetchrow(CODE_ROW, code)
    # Without a directory entry, look where Postgres says the code lives.
    number = book_number(entry)
    if number is None and row is not None:
        number = row["num"]
    if number is None:
        return None
    book = keys.book(number)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(book.meta, "id")
        pipe.sismember(book.free, code)
        pipe.hget(book.assigned, code)
        pipe.pttl(book.lock(code))
        pipe.exists(book.lock(code))
        pipe.zscore(book.locks, code)
        book_id, free, raw, pttl, token, lock_until = await pipe.execute()
    assignment = _decode(raw)
    expected = Assignment.of_row(row) if row is not None and row["owner"] is not None else None
    rows = [
        Row("book", f"{number} {book_id or '(no meta)'}" if entry is not None
            else f"- (no directory entry; rows below from book {number})",
            f"{row['num']} {row['book_id']}" if row is not None else NONE),
        Row("directory", f"{bucket} -> {entry!s}" if entry is not None else f"{bucket}: none",
            "(n/a)", compare=False),
        Row("state", _state(bool(free), raw), _pg_state(row)),
    ]
    for name, attribute in ASSIGNMENT_FIELDS:
        rows.append(Row(name, _field(assignment, name, attribute),
                        _field(expected, name, attribute)))
    if assignment is not None:
        held = await redis.zscore(book.user(assignment.owner), code)
        rows.append(Row("user index", f"{'in' if held is not None else 'NOT in'}"
                        f" {book.user(assignment.owner)}", "(n/a)", compare=False))
    now = int(time.time() * 1000)
    rows += [
        Row("lock key", _lock(int(pttl), bool(token)), NOT_DURABLE, compare=False),
        Row("locks zset", _lock_entry(lock_until, now), NOT_DURABLE, compare=False),
        Row("added at", "(n/a)", iso(to_ms(row["added_at"])) if row is not None else NONE,
            compare=False),
    ]
    lines = table(f"code {code} (directory bucket {directory_bucket(code):04x})", rows)
    # Undelivered or unacknowledged entries: Postgres may be behind Redis.
    lines += ["", f"outbox {await _outbox_line(redis, book.events)}"]
    lines += ["", "last 10 events in postgres (newest first):"]
    events = await conn.fetch(LAST_EVENTS, code)
    lines += [f"  {iso(to_ms(e['at']))}  {e['type']:<12}  v{e['version']:<4}"
              f"  user={e['user_id'] or NONE}  {e['stream_id']}  {e['detail']}" for e in events]
    if not events:
        lines.append("  (none)")
    return "\n".join(lines)


async def inspect_book(redis: Redis, conn: asyncpg.Connection, keys: Keys,
                       ident: str) -> str | None:
    """The report for one book (by id or number), or None when neither side knows it."""
    if ident.isascii() and ident.isdigit():
        number: int | None = book_number(ident)
        if number is None:  # past any book number (a Postgres integer)
            return None
        found = await fetch_books(conn, "WHERE num = $1", number)
    else:
        number = book_number(await redis.hget(keys.books, ident))
        found = await fetch_books(conn, "WHERE id::text = $1", ident)
    row = found[0] if found else None
    if number is None and row is not None:
        number = row.num
    meta = {str(k): str(v) for k, v in (await redis.hgetall(keys.book(number).meta)).items()} \
        if number is not None else {}
    if not meta and row is None:
        return None
    assert number is not None
    book_id = meta.get("id") or (row.id if row is not None else "?")
    lines = table(f"book {number} ({book_id})", _settings_rows(meta, row))
    lines.append("")
    lines += table("counts", await _count_rows(redis, conn, keys, number, row))
    lines += ["", f"outbox {await _outbox_line(redis, keys.book(number).events)}"]
    if row is not None:
        events = await conn.fetchrow(
            "SELECT count(*) AS n, max(at) AS last FROM events WHERE book_id = $1::uuid", row.id)
        parked = await conn.fetchval(
            "SELECT count(*) FROM parked_events WHERE book_id = $1", str(row.id))
        lines += [f"postgres {events['n']} event row(s), last at {iso(to_ms(events['last']))};"
                  f" {parked} parked event(s)"]
    return "\n".join(lines)


def _settings_rows(meta: dict[str, str], row: BookRow | None) -> list[Row]:
    expected = meta_settings(row) if row is not None else {}
    if row is not None:
        expected["createdAt"] = str(to_ms(row.created_at))
    rows = []
    for name in (*SETTING_FIELDS, "createdAt", "updatedAt"):
        mine = _setting(name, meta.get(name))
        theirs = _setting(name, expected.get(name)) if row is not None else NONE
        if name == "updatedAt":
            theirs = "(n/a)"
        # Redis stamps the times with its own clock: shown, not compared.
        rows.append(Row(name, mine, theirs, compare=name not in ("createdAt", "updatedAt")))
    return rows


async def _count_rows(redis: Redis, conn: asyncpg.Connection, keys: Keys, number: int,
                      row: BookRow | None) -> list[Row]:
    book = keys.book(number)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hmget(book.meta, "total", "assigned", "redeemed")
        pipe.scard(book.free)
        pipe.hlen(book.assigned)
        pipe.zcount(book.locks, f"({int(time.time() * 1000)}", "+inf")
        (total, assigned, redeemed), free, held, locked = await pipe.execute()
    pg: dict[str, Any] = {}
    if row is not None:
        counts = await conn.fetchrow(BOOK_COUNTS, row.id)
        pg = {**dict(counts), "free": counts["total"] - counts["assigned"]}

    def side(name: str) -> str:
        return str(pg[name]) if name in pg else NONE

    return [
        Row("total (meta / rows)", str(total or NONE), side("total")),
        Row("assigned (meta / owner set)", str(assigned or NONE), side("assigned")),
        Row("redeemed (meta / sum)", str(redeemed or NONE), side("redeemed")),
        Row("free (set / owner null)", str(free), side("free")),
        Row("assigned (hash / owner set)", str(held), side("assigned")),
        Row("users holding codes", "(n/a)", side("users"), compare=False),
        Row("locked now", str(locked), NOT_DURABLE, compare=False),
    ]


async def _outbox_line(redis: Redis, stream: str) -> str:
    try:
        length = await redis.xlen(stream)
        groups = await redis.xinfo_groups(stream) if length or await redis.exists(stream) else []
    except ResponseError as exc:
        return f"unreadable: {exc}"
    parts = [f"{stream}: {length} entr{'y' if length == 1 else 'ies'}"]
    for g in groups:
        parts.append(f"group {g['name']}: pending {g['pending']}, lag {g.get('lag')},"
                     f" last delivered {g['last-delivered-id']}")
    if not groups:
        parts.append("no consumer group (no writer has read it yet)")
    return "; ".join(parts)


def _decode(raw: str | None) -> Assignment | None:
    if raw is None:
        return None
    try:
        return Assignment.decode(raw)
    except ValueError:
        return None


def _state(free: bool, raw: str | None) -> str:
    if raw is not None:
        state = "assigned" if _decode(raw) is not None else f"assigned, malformed {raw!r}"
        return f"{state} AND free" if free else state
    return "free" if free else "absent"


def _pg_state(row: Any) -> str:
    if row is None:
        return "absent"
    return "free" if row["owner"] is None else "assigned"


def _field(assignment: Assignment | None, name: str, attribute: str) -> str:
    return NONE if assignment is None else shown(name, getattr(assignment, attribute))


def _setting(name: str, value: str | None) -> str:
    if value is None:
        return "(absent)"
    if value == "":
        return '""'
    return f"{value} ({iso(value)})" if name in TIME_FIELDS else value


def _lock(pttl: int, token: bool) -> str:
    if pttl == -2:
        return "none"
    ttl = "no expiry (!)" if pttl == -1 else f"PTTL {pttl} ms"
    return f"{ttl}, token {'present' if token else 'missing'}"


def _lock_entry(until: float | None, now: int) -> str:
    if until is None:
        return "none"
    state = "expired, not yet recorded" if until <= now else "live"
    return f"until {iso(int(until))} ({state})"
