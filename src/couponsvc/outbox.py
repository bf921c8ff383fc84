"""Outbox events as the writer sees them, and how they land in Postgres.

The stream fields are documented in docs/redis-keys.md. Events about a code
carry the code's whole state, so applying them is an upsert guarded by the
version: the highest version wins, whatever order events arrive in.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from couponsvc.db import SYNCHRONOUS_COMMIT, rows_written

log = logging.getLogger("couponsvc")

GROUP = "writer"
CODE_EVENTS = frozenset({"assigned", "locked", "unlocked", "lock_expired", "redeemed"})
_STANDARD = frozenset({"type", "book", "code", "user", "at", "v"})

# One statement per table per batch, its rows sent as one JSON document
# (`json_to_recordset`): a statement per row (executemany) cost Postgres
# several times more, and arrays of Python values cost the writer more to
# encode (asyncpg checks every element) than msgspec takes to write the JSON.
# Times travel as epoch milliseconds, 0 meaning none.
def _at(ms: str) -> str:
    return f"'epoch'::timestamptz + NULLIF({ms}, 0) * interval '1 millisecond'"


INSERT_EVENTS = (
    "INSERT INTO events (book_id, stream_id, type, code, user_id, at, version, detail)"
    f" SELECT b, s, t, c, u, {_at('a')}, v, d FROM json_to_recordset($1::json)"
    " AS e(b uuid, s text, t text, c text, u text, a bigint, v int, d jsonb)"
)
# For a batch that holds events already in: one applied before its XACK
# reached Redis. Only then: ON CONFLICT's check before each row cost Postgres
# 10.6-12.2 us an event against 10.0-10.8 for the plain insert.
INSERT_EVENTS_SKIPPING_KNOWN = INSERT_EVENTS + " ON CONFLICT DO NOTHING"
# A batch holds one event per code (the latest), so no row is updated twice.
# Rows go in code order: batches applied side by side (the writer's parallel
# batches, two writers) then lock the rows they share in the same order, and
# one waits for the other instead of deadlocking.
UPSERT_CODES = (
    "INSERT INTO codes AS c (code, book_id, owner, assigned_at, times_redeemed,"
    " last_redeemed_at, version)"
    f" SELECT c, b, u, {_at('a')}, t, {_at('l')}, v FROM json_to_recordset($1::json)"
    " AS e(c text, b uuid, u text, a bigint, t int, l bigint, v int) ORDER BY c"
    " ON CONFLICT (code) DO UPDATE SET owner = EXCLUDED.owner,"
    " assigned_at = EXCLUDED.assigned_at, times_redeemed = EXCLUDED.times_redeemed,"
    " last_redeemed_at = EXCLUDED.last_redeemed_at, version = EXCLUDED.version"
    " WHERE c.version < EXCLUDED.version"
)


@dataclass(frozen=True, slots=True)
class Event:
    stream: str
    id: str
    fields: dict[str, str]

    @property
    def book_id(self) -> str:
        return self.fields["book"]

    @property
    def type(self) -> str:
        return self.fields["type"]

    @property
    def version(self) -> int:
        return int(self.fields["v"])

    def fields_json(self) -> str:
        # JSON escapes control characters, NUL included, so any entry fits in text.
        return msgspec.json.encode(self.fields).decode()

    def event_row(self) -> dict[str, Any]:
        """This event as a row of INSERT_EVENTS."""
        f = self.fields
        return {"b": f["book"], "s": self.id, "t": f["type"], "c": f.get("code") or None,
                "u": f.get("user") or None, "a": int(f["at"]), "v": int(f["v"]),
                "d": {k: v for k, v in f.items() if k not in _STANDARD}}

    def code_row(self) -> dict[str, Any]:
        """The code's state after this event, as a row of UPSERT_CODES."""
        f = self.fields
        return {"c": f["code"], "b": f["book"], "u": f["user"], "a": int(f["assignedAt"]),
                "t": int(f["times"]), "l": int(f["last"]), "v": int(f["v"])}


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CODE_FIELDS = ("code", "user", "assignedAt", "times", "last")
_CODE_NUMBERS = ("assignedAt", "times", "last")
# Versions and redemption counts go into integer columns; the other numbers
# are epoch milliseconds (bigint; 15 digits reach beyond the year 30,000).
_INTEGER_FIELDS = frozenset({"v", "times"})
_INTEGER_MAX = 2**31 - 1
_MS_DIGITS = 15


def _number_problem(name: str, value: str) -> str | None:
    # isascii: str.isdigit alone also accepts digits of other scripts ("٣").
    if not (value.isascii() and value.isdigit()):
        return f"field {name!r} is not a whole number: {value!r}"
    if len(value) > _MS_DIGITS or (name in _INTEGER_FIELDS and int(value) > _INTEGER_MAX):
        return f"field {name!r} is out of range: {value!r}"
    return None


def malformed(fields: dict[str, str]) -> str | None:
    """Why an entry cannot be applied as it is, or None when it can.

    Runs for every event the writer reads: plain string methods instead of a
    regex per number took it from 2.8 to about 2 us an event (the writer's
    parsing of an event, all in, about 5 us)."""
    for name in ("type", "book", "at", "v"):
        if name not in fields:
            return f"missing field {name!r}"
    if not _UUID.fullmatch(fields["book"]):
        return f"book {fields['book']!r} is not a book id"
    numbers: tuple[str, ...] = ("at", "v")
    if fields["type"] in CODE_EVENTS:
        missing = [name for name in _CODE_FIELDS if not fields.get(name)]
        if missing:
            return f"missing field(s) {', '.join(missing)}"
        numbers += _CODE_NUMBERS
    for name in numbers:
        if (problem := _number_problem(name, fields[name])) is not None:
            return problem
    if "\x00" in "".join(fields.values()):
        return "a field contains a NUL character"
    return None


def parse_entries(stream: str, entries: Sequence[Any]) -> tuple[list[Event], list[Bad]]:
    """Stream entries as redis-py returns them: (id, {field: value}); deleted ones
    (None) are skipped. Entries that could never apply come back apart."""
    events: list[Event] = []
    bad: list[Bad] = []
    for entry_id, fields in entries:
        if fields is None:
            continue
        # redis-py hands each entry's fields over as a fresh dict: no copy needed.
        event = Event(stream, str(entry_id), fields if isinstance(fields, dict) else dict(fields))
        problem = malformed(event.fields)
        if problem is None:
            events.append(event)
        else:
            bad.append(Bad(event, problem))
    return events, bad


@dataclass(frozen=True, slots=True)
class Bad:
    event: Event
    problem: str


async def apply_events(conn: asyncpg.Connection, events: Sequence[Event]) -> None:
    """Applies a batch in one transaction; applying it twice changes nothing."""
    latest: dict[str, Event] = {}
    for event in events:
        if event.type in CODE_EVENTS:
            seen = latest.get(event.fields["code"])
            if seen is None or seen.version < event.version:
                latest[event.fields["code"]] = event
    event_rows = _json([e.event_row() for e in events])
    code_rows = _json([e.code_row() for e in latest.values()]) if latest else None
    try:
        await _apply(conn, INSERT_EVENTS, event_rows, code_rows)
    except asyncpg.UniqueViolationError:
        # Some of these events are in already: a writer stopped between commit
        # and XACK, another writer claimed the batch (XAUTOCLAIM) while a slow
        # one applied it, or an operator replayed the stream. Postgres logs the
        # refused insert as an ERROR; this says what became of it.
        inserted = await _apply(conn, INSERT_EVENTS_SKIPPING_KNOWN, event_rows, code_rows)
        log.info("batch of %d events from %s applied again: %d were in already",
                 len(events), events[0].stream, len(events) - inserted)


async def _apply(conn: asyncpg.Connection, insert_events: str, event_rows: str,
                 code_rows: str | None) -> int:
    """One transaction; returns how many event rows went in."""
    async with conn.transaction():
        # The writer acknowledges a batch once this commits.
        await conn.execute(SYNCHRONOUS_COMMIT)
        status = await conn.execute(insert_events, event_rows)  # "INSERT 0 N"
        if code_rows is not None:
            await conn.execute(UPSERT_CODES, code_rows)
    return rows_written(status)


def _json(rows: list[dict[str, Any]]) -> str:
    return msgspec.json.encode(rows).decode()
