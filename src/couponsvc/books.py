"""Admin operations: create a book, add or generate its codes, read it."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import asyncpg

from couponsvc import codes as coderules
from couponsvc import errors
from couponsvc.book_claims import book_made, claim_book_id
from couponsvc.coupons import Idempotency
from couponsvc.instants import datetime_to_ms, ms_to_datetime
from couponsvc.keys import directory_buckets, directory_tag
from couponsvc.records import BookRow, Records
from couponsvc.schemas import Book, BookCounts, CreateBook, Refused, UploadResult
from couponsvc.store import Located, Store

# Codes per add_codes call.
ADD_CHUNK = 5000
# A bulk load goes in stages of a chunk each (Postgres takes one while Redis
# takes the last): about LOAD_STAGES chunks, so the stages overlap even for a
# small load, of MIN_LOAD_CHUNK to LOAD_CHUNK codes.
LOAD_STAGES = 16
MIN_LOAD_CHUNK = 10_000
LOAD_CHUNK = 100_000
# Chunks Postgres takes at once, on as many connections: a COPY keeps one core
# busy, and the API and Redis leave room for a second.
POSTGRES_STAGES = 2
# A bulk load's codes by directory bucket (see keys.py).
Buckets = dict[int, list[str]]
# Rounds of redrawing colliding generated codes before settling for fewer.
GENERATE_ROUNDS = 20
# Book numbers tried before giving up (a lost book-seq is skipped past one by one).
NUMBER_ATTEMPTS = 1000
# The span a book's validFrom / validUntil may take (see _check_settings).
EARLIEST_MOMENT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_MOMENT = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass
class _Outcome:
    added: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    in_other_book: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)

    def in_request_order(self, candidates: list[str]) -> None:
        """Puts the refused codes back in the order they were sent (a load
        works through them by directory bucket)."""
        if not (self.duplicates or self.in_other_book):
            return
        position = {code: n for n, code in enumerate(candidates)}
        self.duplicates.sort(key=position.__getitem__)
        self.in_other_book.sort(key=position.__getitem__)

    def result(self, book_id: str, with_codes: bool = False, shortfall: int = 0) -> UploadResult:
        refused = Refused(duplicates=self.duplicates, inOtherBook=self.in_other_book,
                          invalid=self.invalid)
        return UploadResult(
            couponBookId=book_id,
            added=len(self.added),
            refusedCount=len(self.duplicates) + len(self.in_other_book) + len(self.invalid),
            refused=refused,
            codes=self.added if with_codes else None,
            shortfall=shortfall,
        )


class Books:
    """Admin operations. With `records` (Postgres), every write lands there
    first, so an answered admin call is durable; without, Redis only."""

    def __init__(self, store: Store, records: Records | None = None) -> None:
        self.store = store
        self.records = records

    async def create(self, req: CreateBook) -> Book:
        book, _ = await self.create_once(req, None)
        return book

    async def create_once(self, req: CreateBook,
                          idem: Idempotency | None) -> tuple[Book, bool]:
        """The new book; with an Idempotency-Key, at most one per key
        (book_claims.py), and True when it is the one an earlier request made."""
        _check_settings(req)
        pattern = req.codePattern or coderules.DEFAULT_PATTERN
        if req.initialCouponAmount:
            self._check_count(req.initialCouponAmount, "initialCouponAmount")
            coderules.check_pattern(pattern, req.initialCouponAmount, "codePattern")
        store = self.store
        book_id = str(uuid.uuid4())
        if idem is not None:
            book_id, made_earlier = await claim_book_id(store.redis, store.keys, idem, book_id)
            if made_earlier:
                return await self.get(book_id), True
        made = await self._create(req, book_id, pattern)
        if idem is not None:
            await book_made(store.redis, store.keys, idem, book_id,
                            store.settings.idempotency_ttl_seconds)
        return made, False

    async def _create(self, req: CreateBook, book_id: str, pattern: str) -> Book:
        book = await self._new_book(req, book_id)
        store = self.store
        number = book.number
        fields: dict[str, str | int] = {
            "num": number,
            "name": req.name,
            "description": req.description,
            "multipleRedeemsAllowed": int(req.multipleRedeemsAllowed),
            "lockTtlMs": req.lockTtlSeconds * 1000,
        }
        for name, value in (("maxRedeemsPerCode", req.maxRedeemsPerCode),
                            ("maxPerUser", req.maxPerUser)):
            if value is not None:
                fields[name] = value
        for name, moment in (("validFrom", req.validFrom), ("validUntil", req.validUntil)):
            if moment is not None:
                fields[name] = datetime_to_ms(moment)
        args = [book.id, *(item for pair in fields.items() for item in pair)]
        reply = await store.run("create_book", [book.keys.meta, book.keys.events], args)
        if reply[0] != "ok":
            raise errors.Conflict(f"book number {number} was taken meanwhile; retry")
        await store.redis.hset(store.keys.books, book.id, number)
        if req.initialCouponAmount:
            # A shortfall still answers 201: the book exists either way, and
            # its counts say how many codes were made.
            await self._generate(book, pattern, req.initialCouponAmount)
        return await self.get(book.id)

    async def _new_book(self, req: CreateBook, book_id: str) -> Located:
        """A fresh id and an unused book number, recorded in Postgres first.
        Numbers come from INCR, so two creators never share one; a sequence
        that fell behind (a Redis restored without it) is skipped past."""
        store = self.store
        for _ in range(NUMBER_ATTEMPTS):
            number = int(await store.redis.incr(store.keys.book_seq))
            if await store.redis.exists(store.keys.book(number).meta):
                continue
            book = Located(number=number, keys=store.keys.book(number), id=book_id)
            if self.records is not None:
                try:
                    await self.records.insert_book(_book_row(book, req))
                except asyncpg.UniqueViolationError:
                    continue  # Postgres knows this number (Redis lost it): skip past
            return book
        raise errors.Conflict("could not find an unused book number; run couponsvc rebuild")

    async def get(self, book_id: str) -> Book:
        book = await self.store.book(book_id)
        reply = await self.store.run("read_book", [book.keys.meta, book.keys.free,
                                                   book.keys.locks])
        meta = dict(zip(reply[3::2], reply[4::2], strict=True))
        if reply[0] != "ok" or meta.get("id") != book_id:
            raise errors.BookNotFound(f"no coupon book {book_id}")
        available, locked = int(reply[1]), int(reply[2])
        max_redeems, max_per_user = meta.get("maxRedeemsPerCode"), meta.get("maxPerUser")
        valid_from, valid_until = meta.get("validFrom"), meta.get("validUntil")
        return Book(
            id=book.id,
            name=str(meta["name"]),
            description=str(meta.get("description", "")),
            multipleRedeemsAllowed=meta.get("multipleRedeemsAllowed") == "1",
            maxRedeemsPerCode=int(max_redeems) if max_redeems is not None else None,
            maxPerUser=int(max_per_user) if max_per_user is not None else None,
            lockTtlSeconds=int(meta["lockTtlMs"]) // 1000,
            validFrom=ms_to_datetime(valid_from) if valid_from is not None else None,
            validUntil=ms_to_datetime(valid_until) if valid_until is not None else None,
            createdAt=ms_to_datetime(meta["createdAt"]),
            updatedAt=ms_to_datetime(meta["updatedAt"]),
            counts=BookCounts(total=int(meta["total"]), available=available,
                              assigned=int(meta["assigned"]), locked=locked,
                              redeemed=int(meta["redeemed"])),
        )

    async def upload(self, book_id: str, raw_codes: Sequence[object]) -> UploadResult:
        self._check_count(len(raw_codes), "codes")
        book = await self.store.book(book_id)
        outcome = _Outcome()
        if coderules.all_valid_and_distinct(raw_codes):
            candidates = cast(list[str], list(raw_codes))
        else:
            candidates = _sort_out(raw_codes, outcome)
        records = self.records

        async def durable(chunk: Buckets) -> Buckets:
            if records is None:
                return chunk
            claims = await records.claim_codes(book.id, _codes(chunk))
            outcome.in_other_book.extend(claims.elsewhere)
            return _without(chunk, set(claims.elsewhere))

        async def usable(mine: Buckets) -> None:
            await self._add(book, await self._claim(book, mine, outcome.in_other_book), outcome)

        await _pipelined(_bucket_chunks(candidates), durable, usable)
        outcome.in_request_order(candidates)
        return outcome.result(book.id)

    async def generate(self, book_id: str, pattern: str, count: int) -> UploadResult:
        """Up to `count` new codes. A pattern whose unused codes run short gives
        fewer, each one durable and listed, and says how many are missing
        (`shortfall`); only when it gives none is it a 409, with nothing written."""
        self._check_count(count, "generate.count")
        coderules.check_pattern(pattern, count, "generate.pattern")
        book = await self.store.book(book_id)
        result = await self._generate(book, pattern, count)
        if result.added == 0:
            raise errors.Conflict(
                f"pattern {pattern!r} has no unused codes left to find; use a longer pattern")
        return result

    async def _generate(self, book: Located, pattern: str, count: int) -> UploadResult:
        outcome = _Outcome()
        records = self.records

        async def durable_new(chunk: Buckets) -> Buckets:
            if records is None:
                return chunk
            codes = _codes(chunk)
            new = (await records.claim_codes(book.id, codes, want_new=True)).new
            return chunk if len(new) == len(codes) else _without(chunk, set(codes) - new)

        async def usable_new(new: Buckets) -> None:
            await self._add(book, await self._claim(book, new, [], only_new=True), outcome)

        for _ in range(GENERATE_ROUNDS):
            need = count - len(outcome.added)
            if need == 0:
                break
            # Codes that collide (taken anywhere) are silently redrawn. Each
            # round is durable before the next: the codes it found are kept
            # even if later rounds find no more.
            await _pipelined(_bucket_chunks(coderules.generate(pattern, need)),
                             durable_new, usable_new)
        return outcome.result(book.id, with_codes=True, shortfall=count - len(outcome.added))

    def _check_count(self, count: int, field_name: str) -> None:
        limit = self.store.settings.max_upload_codes
        if count > limit:
            raise errors.InvalidRequest(f"{field_name}: at most {limit} codes per request",
                                        field=field_name)

    async def _claim(self, book: Located, codes: Buckets, in_other_book: list[str],
                     only_new: bool = False) -> list[str]:
        """Claims codes for the book in the directory; returns those now the book's."""
        # One script call per directory hash tag, naming that tag's buckets,
        # each followed by its count of codes and the codes.
        by_tag: dict[int, list[int]] = defaultdict(list)
        for bucket in codes:
            by_tag[directory_tag(bucket)].append(bucket)
        directory_key = self.store.keys.directory_of_bucket
        calls: list[tuple[list[str], list[str | int]]] = []
        codes_of_call: list[list[str]] = []
        for buckets in by_tag.values():
            args: list[str | int] = [book.number]
            in_call: list[str] = []
            for bucket in buckets:
                bucket_codes = codes[bucket]
                args.append(len(bucket_codes))
                args += bucket_codes
                in_call += bucket_codes
            calls.append(([directory_key(bucket) for bucket in buckets], args))
            codes_of_call.append(in_call)
        claimed: list[str] = []
        replies = await self.store.scripts.run_many("claim_codes", calls) if calls else []
        for in_call, reply in zip(codes_of_call, replies, strict=True):
            flags = str(reply)
            if not flags.strip("n"):  # the usual case: every code new
                claimed += in_call
                continue
            for code, flag in zip(in_call, flags, strict=True):
                if flag == "n" or (flag == "s" and not only_new):
                    claimed.append(code)
                elif flag == "o":
                    in_other_book.append(code)
        return claimed

    async def _add(self, book: Located, codes: Sequence[str], outcome: _Outcome) -> None:
        keys = [book.keys.meta, book.keys.free, book.keys.assigned, book.keys.events]
        chunks = [codes[start:start + ADD_CHUNK] for start in range(0, len(codes), ADD_CHUNK)]
        replies = await self.store.scripts.run_many("add_codes", [(keys, c) for c in chunks])
        for chunk, reply in zip(chunks, replies, strict=True):
            if reply[0] != "ok":
                raise errors.BookNotFound(f"no coupon book {book.id}")
            flags = str(reply[1])
            if not flags.strip("a"):  # the usual case: every code added
                outcome.added += chunk
                continue
            for code, flag in zip(chunk, flags, strict=True):
                (outcome.added if flag == "a" else outcome.duplicates).append(code)


def _sort_out(raw_codes: Sequence[object], outcome: _Outcome) -> list[str]:
    """The valid codes, each once; notes the invalid and repeated ones."""
    seen: set[str] = set()
    candidates: list[str] = []
    for raw in raw_codes:
        if not coderules.is_valid_code(raw):
            outcome.invalid.append(str(raw))
        elif raw in seen:
            outcome.duplicates.append(str(raw))
        else:
            code = str(raw)
            seen.add(code)
            candidates.append(code)
    return candidates


def _bucket_chunks(codes: Sequence[str]) -> list[Buckets]:
    """Groups distinct codes by directory bucket and cuts the buckets, in
    order, into chunks (see LOAD_STAGES). A chunk is then a run of
    neighbouring buckets with all of each bucket's codes, so Redis claims it
    with a few commands per bucket and one script call per hash tag, where
    chunks cut in upload order would touch every bucket for a code or two."""
    size = min(LOAD_CHUNK, max(MIN_LOAD_CHUNK, -(-len(codes) // LOAD_STAGES)))
    by_bucket: Buckets = defaultdict(list)
    for code, bucket in zip(codes, directory_buckets(codes), strict=True):
        by_bucket[bucket].append(code)
    chunks: list[Buckets] = []
    chunk: Buckets = {}
    in_chunk = 0
    for bucket in sorted(by_bucket):
        chunk[bucket] = by_bucket[bucket]
        in_chunk += len(chunk[bucket])
        if in_chunk >= size:
            chunks.append(chunk)
            chunk, in_chunk = {}, 0
    if chunk:
        chunks.append(chunk)
    return chunks


def _codes(chunk: Buckets) -> list[str]:
    return [code for bucket_codes in chunk.values() for code in bucket_codes]


def _without(chunk: Buckets, dropped: set[str]) -> Buckets:
    if not dropped:
        return chunk
    kept = {bucket: [c for c in codes if c not in dropped] for bucket, codes in chunk.items()}
    return {bucket: codes for bucket, codes in kept.items() if codes}


async def _pipelined(chunks: Sequence[Buckets],
                     durable: Callable[[Buckets], Awaitable[Buckets]],
                     usable: Callable[[Buckets], Awaitable[None]]) -> None:
    """Loads chunks in two stages that overlap: Postgres (`durable`, which has the
    last word on which codes are the book's) takes up to POSTGRES_STAGES
    chunks at once, and Redis (`usable`) takes each chunk Postgres has
    finished. A bulk load then costs about the slower of the two, not their
    sum. Each chunk reaches Redis only after Postgres has it; after a failure
    no further chunk starts, and the request answers only once the chunks
    under way have landed (or failed): nothing keeps running after it."""
    postgres_slots = asyncio.Semaphore(POSTGRES_STAGES)
    failed = False

    async def load(chunk: Buckets) -> None:
        nonlocal failed
        try:
            async with postgres_slots:
                if failed:
                    return
                kept = await durable(chunk)
            await usable(kept)
        except BaseException:
            failed = True
            raise

    outcomes = await asyncio.gather(*(load(chunk) for chunk in chunks), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def _book_row(book: Located, req: CreateBook) -> BookRow:
    return BookRow(
        id=book.id, num=book.number, name=req.name, description=req.description,
        multiple_redeems_allowed=req.multipleRedeemsAllowed,
        max_redeems_per_code=req.maxRedeemsPerCode, max_per_user=req.maxPerUser,
        lock_ttl_ms=req.lockTtlSeconds * 1000, valid_from=req.validFrom,
        valid_until=req.validUntil, created_at=datetime.now(UTC),
    )


def _check_settings(req: CreateBook) -> None:
    for name, moment in (("validFrom", req.validFrom), ("validUntil", req.validUntil)):
        # Redis keeps epoch milliseconds and Postgres a timestamptz: both hold
        # this span exactly (asyncpg maps datetime.min to -infinity, and a
        # year-9999 time with a negative offset is past Python's range in UTC).
        if moment is not None and not EARLIEST_MOMENT <= moment < LATEST_MOMENT:
            raise errors.InvalidRequest(
                f"{name} must be from 1970-01-01 up to (not including) 9999-01-01 UTC",
                field=name)
    if req.codePattern is not None and not req.initialCouponAmount:
        # The pattern is not kept: without codes to make now it would be dropped.
        raise errors.InvalidRequest("codePattern needs initialCouponAmount above 0",
                                    field="codePattern")
    if req.maxRedeemsPerCode is not None and not req.multipleRedeemsAllowed:
        raise errors.InvalidRequest(
            "maxRedeemsPerCode needs multipleRedeemsAllowed: true", field="maxRedeemsPerCode")
    # Compared as Redis keeps them, in whole milliseconds: two times within one
    # millisecond would make an empty window.
    if req.validFrom and req.validUntil and \
            datetime_to_ms(req.validFrom) >= datetime_to_ms(req.validUntil):
        raise errors.InvalidRequest("validFrom must be before validUntil", field="validUntil")
