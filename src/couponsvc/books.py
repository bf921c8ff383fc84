"""Admin operations: create a book, add or generate its codes, read it."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import cast

import asyncpg

from couponsvc import codes as coderules
from couponsvc import errors, loads
from couponsvc.book_claims import Claimed, Lease, claim_book_id, holding_lease, new_token
from couponsvc.coupons import Idempotency
from couponsvc.instants import datetime_to_ms, ms_to_datetime
from couponsvc.records import BookRow, Records
from couponsvc.schemas import Book, BookCounts, CreateBook, UploadResult
from couponsvc.store import Located, Store

# Rounds of redrawing colliding generated codes before settling for fewer.
GENERATE_ROUNDS = 20
# Book numbers tried before giving up (a lost book-seq is skipped past one by one).
NUMBER_ATTEMPTS = 1000
# The span a book's validFrom / validUntil may take (see _check_settings).
EARLIEST_MOMENT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_MOMENT = datetime(9999, 1, 1, tzinfo=UTC)


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
        """The new book; with an Idempotency-Key, the key's one book
        (book_claims.py), and True when an earlier request made it."""
        _check_settings(req)
        pattern = req.codePattern or coderules.DEFAULT_PATTERN
        if req.initialCouponAmount:
            self._check_count(req.initialCouponAmount, "initialCouponAmount")
            coderules.check_pattern(pattern, req.initialCouponAmount, "codePattern")
        book_id = str(uuid.uuid4())
        if idem is None:
            return await self._make(req, book_id, pattern), False
        token = new_token()
        book_id, claimed = await claim_book_id(self.store, idem, book_id, token)
        if claimed is Claimed.MADE:
            return await self.get(book_id), True
        async with holding_lease(self.store, idem, book_id, token) as lease:
            return await self._make(req, book_id, pattern, lease,
                                    resuming=claimed is Claimed.RESUME), False

    async def _make(self, req: CreateBook, book_id: str, pattern: str,
                    lease: Lease | None = None, resuming: bool = False) -> Book:
        """Makes the book, or finishes making it: run again with the same id
        (`resuming`: a retry with the create's Idempotency-Key), each step
        finds what an earlier attempt did and does only the rest. Postgres
        comes first, so an answered create is durable. With a `lease`, each
        step first checks that no other request has taken the work over."""
        keep = lease.keep if lease is not None else _go_on
        book, fresh = await self._number(req, book_id, resuming)
        await keep()
        await self._make_usable(book, req)
        if req.initialCouponAmount:
            have = 0 if fresh else await self._codes_so_far(book, keep)
            if have < req.initialCouponAmount:
                # A shortfall still answers 201: the book exists either way,
                # and its counts say how many codes were made.
                await self._generate(book, pattern, req.initialCouponAmount - have, keep)
        return await self.get(book.id)

    async def _number(self, req: CreateBook, book_id: str,
                      resuming: bool) -> tuple[Located, bool]:
        """The book's number, and True when it is new: the one an earlier
        attempt recorded, else an unused one, recorded in Postgres first.
        Numbers come from INCR, so two creators never share one; a sequence
        that fell behind (a Redis restored without it) is skipped past.
        Without Postgres an earlier attempt's number is known only once it
        reached the index of books (one that did not leaves an unused meta)."""
        store, records = self.store, self.records
        if resuming:
            earlier = await records.book_number(book_id) if records is not None \
                else await store.redis.hget(store.keys.books, book_id)
            if earlier is not None:
                return self._located(book_id, int(earlier)), False
        for _ in range(NUMBER_ATTEMPTS):
            number = int(await store.redis.incr(store.keys.book_seq))
            if await store.redis.exists(store.keys.book(number).meta):
                continue
            book = self._located(book_id, number)
            if records is None:
                return book, True
            try:
                await records.insert_book(_book_row(book, req))
                return book, True
            except asyncpg.UniqueViolationError:
                # Postgres knows this number (Redis lost it): skip past. Or
                # an attempt whose lease lapsed recorded the book meanwhile.
                if (earlier := await records.book_number(book_id)) is not None:
                    return self._located(book_id, earlier), False
        raise errors.Conflict("could not find an unused book number; run couponsvc rebuild")

    def _located(self, book_id: str, number: int) -> Located:
        return Located(number=number, keys=self.store.keys.book(number), id=book_id)

    async def _make_usable(self, book: Located, req: CreateBook) -> None:
        """The book's meta hash and outbox (create_book.lua), then its entry in
        the index of books, which the writer drains the outboxes of."""
        store = self.store
        fields: dict[str, str | int] = {
            "num": book.number,
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
            raise errors.Conflict(f"book number {book.number} was taken meanwhile; retry")
        await store.redis.hset(store.keys.books, book.id, book.number)

    async def _codes_so_far(self, book: Located, keep: Callable[[], Awaitable[None]]) -> int:
        """The codes the book holds in Redis, after adding any an earlier
        attempt recorded in Postgres but did not get into Redis (such codes
        are unassigned: nobody could draw them). Codes already in Redis are
        left as they are."""
        records, available = self.records, (await self.get(book.id)).counts.available
        # Counted first: the codes themselves (up to a million) only when needed.
        if records is not None and await records.count_unassigned(book.id) > available:
            recorded = await records.unassigned_codes(book.id)
            step = self.store.settings.max_upload_codes
            for start in range(0, len(recorded), step):
                await keep()
                await self.upload(book.id, recorded[start:start + step])
        return (await self.get(book.id)).counts.total

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
        outcome = loads.LoadOutcome()
        store = self.store
        if coderules.all_valid_and_distinct(raw_codes):
            candidates = cast(list[str], list(raw_codes))
        else:
            candidates = loads.sort_out(raw_codes, outcome)
        records = self.records

        async def durable(chunk: loads.Buckets) -> loads.Buckets:
            if records is None:
                return chunk
            claims = await records.claim_codes(book.id, loads.chunk_codes(chunk))
            outcome.in_other_book.extend(claims.elsewhere)
            return loads.without(chunk, set(claims.elsewhere))

        async def usable(mine: loads.Buckets) -> None:
            claimed = await loads.claim(store, book, mine, outcome.in_other_book)
            await loads.add(store, book, claimed, outcome)

        await loads.pipelined(loads.bucket_chunks(candidates), durable, usable)
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

    async def _generate(self, book: Located, pattern: str, count: int,
                        before_round: Callable[[], Awaitable[None]] | None = None,
                        ) -> UploadResult:
        outcome = loads.LoadOutcome()
        store, records = self.store, self.records

        async def durable_new(chunk: loads.Buckets) -> loads.Buckets:
            if records is None:
                return chunk
            codes = loads.chunk_codes(chunk)
            new = (await records.claim_codes(book.id, codes, want_new=True)).new
            return chunk if len(new) == len(codes) else loads.without(chunk, set(codes) - new)

        async def usable_new(new: loads.Buckets) -> None:
            await loads.add(store, book, await loads.claim(store, book, new, [], only_new=True),
                            outcome)

        for _ in range(GENERATE_ROUNDS):
            need = count - len(outcome.added)
            if need == 0:
                break
            if before_round is not None:
                await before_round()
            # Codes that collide (taken anywhere) are silently redrawn. Each
            # round is durable before the next: the codes it found are kept
            # even if later rounds find no more.
            await loads.pipelined(loads.bucket_chunks(coderules.generate(pattern, need)),
                                  durable_new, usable_new)
        return outcome.result(book.id, with_codes=True, shortfall=count - len(outcome.added))

    def _check_count(self, count: int, field_name: str) -> None:
        limit = self.store.settings.max_upload_codes
        if count > limit:
            raise errors.InvalidRequest(f"{field_name}: at most {limit} codes per request",
                                        field=field_name)


async def _go_on() -> None:
    """A create without an Idempotency-Key has no lease to keep."""


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
