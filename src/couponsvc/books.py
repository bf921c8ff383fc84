"""Admin operations: create a book, add or generate its codes, read it."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from couponsvc import codes as coderules
from couponsvc import errors
from couponsvc.keys import directory_bucket, directory_tag
from couponsvc.records import BookRow, Records
from couponsvc.schemas import Book, BookCounts, CreateBook, Refused, UploadResult
from couponsvc.store import Located, Store, ms_to_datetime, optional_datetime

# Codes per add_codes call.
ADD_CHUNK = 5000
# Codes per stage of a bulk load (Postgres takes one while Redis takes the last).
LOAD_CHUNK = 100_000
# Rounds of redrawing colliding generated codes before giving up.
GENERATE_ROUNDS = 20
# Book numbers tried before giving up (a lost book-seq is skipped past one by one).
NUMBER_ATTEMPTS = 1000


@dataclass
class _Outcome:
    added: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    in_other_book: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)

    def result(self, book_id: str, with_codes: bool = False) -> UploadResult:
        refused = Refused(duplicates=self.duplicates, inOtherBook=self.in_other_book,
                          invalid=self.invalid)
        return UploadResult(
            couponBookId=book_id,
            added=len(self.added),
            refusedCount=len(self.duplicates) + len(self.in_other_book) + len(self.invalid),
            refused=refused,
            codes=self.added if with_codes else None,
        )


class Books:
    """Admin operations. With `records` (Postgres), every write lands there
    first, so an answered admin call is durable; without, Redis only."""

    def __init__(self, store: Store, records: Records | None = None) -> None:
        self.store = store
        self.records = records

    async def create(self, req: CreateBook) -> Book:
        _check_settings(req)
        pattern = req.codePattern or coderules.DEFAULT_PATTERN
        if req.initialCouponAmount:
            self._check_count(req.initialCouponAmount, "initialCouponAmount")
            coderules.check_pattern(pattern, req.initialCouponAmount, "codePattern")
        book = await self._new_book(req)
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
                fields[name] = int(moment.timestamp() * 1000)
        args = [book.id, *(item for pair in fields.items() for item in pair)]
        reply = await store.run("create_book", [book.keys.meta, book.keys.events], args)
        if reply[0] != "ok":
            raise errors.Conflict(f"book number {number} was taken meanwhile; retry")
        await store.redis.hset(store.keys.books, book.id, number)
        if req.initialCouponAmount:
            await self._generate(book, pattern, req.initialCouponAmount)
        return await self.get(book.id)

    async def _new_book(self, req: CreateBook) -> Located:
        """A fresh id and an unused book number, recorded in Postgres first.
        Numbers come from INCR, so two creators never share one; a sequence
        that fell behind (a Redis restored without it) is skipped past."""
        store = self.store
        for _ in range(NUMBER_ATTEMPTS):
            number = int(await store.redis.incr(store.keys.book_seq))
            if await store.redis.exists(store.keys.book(number).meta):
                continue
            book = Located(number=number, keys=store.keys.book(number), id=str(uuid.uuid4()))
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
            validFrom=optional_datetime(valid_from) if valid_from is not None else None,
            validUntil=optional_datetime(valid_until) if valid_until is not None else None,
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
        records = self.records

        async def durable(chunk: Sequence[str]) -> list[str]:
            if records is None:
                return list(chunk)
            claims = await records.claim_codes(book.id, chunk)
            outcome.in_other_book.extend(claims.elsewhere)
            return claims.mine

        async def usable(mine: list[str]) -> None:
            await self._add(book, await self._claim(book, mine, outcome.in_other_book), outcome)

        await _pipelined(_chunks(candidates, LOAD_CHUNK), durable, usable)
        return outcome.result(book.id)

    async def generate(self, book_id: str, pattern: str, count: int) -> UploadResult:
        self._check_count(count, "generate.count")
        coderules.check_pattern(pattern, count, "generate.pattern")
        book = await self.store.book(book_id)
        return await self._generate(book, pattern, count)

    async def _generate(self, book: Located, pattern: str, count: int) -> UploadResult:
        outcome = _Outcome()
        records = self.records

        async def durable_new(chunk: Sequence[str]) -> list[str]:
            if records is None:
                return list(chunk)
            return list((await records.claim_codes(book.id, chunk, want_new=True)).new)

        async def usable_new(new: list[str]) -> None:
            await self._add(book, await self._claim(book, new, [], only_new=True), outcome)

        for _ in range(GENERATE_ROUNDS):
            need = count - len(outcome.added)
            if need == 0:
                return outcome.result(book.id, with_codes=True)
            # Codes that collide (taken anywhere) are silently redrawn.
            await _pipelined(_chunks(coderules.generate(pattern, need), LOAD_CHUNK),
                             durable_new, usable_new)
        raise errors.Conflict(
            f"could not find {count} unused codes for pattern {pattern!r}; use a longer pattern")

    def _check_count(self, count: int, field_name: str) -> None:
        limit = self.store.settings.max_upload_codes
        if count > limit:
            raise errors.InvalidRequest(f"{field_name}: at most {limit} codes per request",
                                        field=field_name)

    async def _claim(self, book: Located, codes: Iterable[str], in_other_book: list[str],
                     only_new: bool = False) -> list[str]:
        """Claims codes for the book in the directory; returns those now the book's."""
        # One script call per directory hash tag, naming that tag's buckets.
        by_tag: dict[int, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
        for code in codes:
            bucket = directory_bucket(code)
            by_tag[directory_tag(bucket)][bucket].append(code)
        calls: list[tuple[list[str], list[str | int]]] = []
        codes_of_call: list[list[str]] = []
        for buckets in by_tag.values():
            bucket_keys: list[str] = []
            args: list[str | int] = [book.number]
            in_call: list[str] = []
            for bucket, bucket_codes in buckets.items():
                bucket_keys.append(self.store.keys.directory_of_bucket(bucket))
                for code in bucket_codes:
                    args += (len(bucket_keys), code)
                    in_call.append(code)
            calls.append((bucket_keys, args))
            codes_of_call.append(in_call)
        claimed: list[str] = []
        replies = await self.store.scripts.run_many("claim_codes", calls) if calls else []
        for in_call, flags in zip(codes_of_call, replies, strict=True):
            for code, flag in zip(in_call, str(flags), strict=True):
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
            for code, flag in zip(chunk, str(reply[1]), strict=True):
                (outcome.added if flag == "a" else outcome.duplicates).append(code)


def _chunks(codes: Sequence[str], size: int) -> list[Sequence[str]]:
    return [codes[start:start + size] for start in range(0, len(codes), size)]


async def _pipelined(chunks: Sequence[Sequence[str]],
                     durable: Callable[[Sequence[str]], Awaitable[list[str]]],
                     usable: Callable[[list[str]], Awaitable[None]]) -> None:
    """Loads chunks in two stages that overlap: Postgres (`durable`, which has the
    last word on which codes are the book's) takes chunk n+1 while Redis
    (`usable`) takes chunk n. A bulk load then costs about the slower of the
    two, not their sum. Each chunk reaches Redis only after Postgres has it."""
    in_redis: asyncio.Task[None] | None = None
    try:
        for chunk in chunks:
            kept = await durable(chunk)
            if in_redis is not None:
                await in_redis
            in_redis = asyncio.ensure_future(usable(kept))
        if in_redis is not None:
            await in_redis
    finally:
        # On an error, let the chunk already on its way to Redis land (or fail)
        # before answering: nothing keeps running after the request.
        if in_redis is not None and not in_redis.done():
            await asyncio.gather(in_redis, return_exceptions=True)


def _book_row(book: Located, req: CreateBook) -> BookRow:
    return BookRow(
        id=book.id, num=book.number, name=req.name, description=req.description,
        multiple_redeems_allowed=req.multipleRedeemsAllowed,
        max_redeems_per_code=req.maxRedeemsPerCode, max_per_user=req.maxPerUser,
        lock_ttl_ms=req.lockTtlSeconds * 1000, valid_from=req.validFrom,
        valid_until=req.validUntil, created_at=datetime.now(UTC),
    )


def _check_settings(req: CreateBook) -> None:
    if req.maxRedeemsPerCode is not None and not req.multipleRedeemsAllowed:
        raise errors.InvalidRequest(
            "maxRedeemsPerCode needs multipleRedeemsAllowed: true", field="maxRedeemsPerCode")
    if req.validFrom and req.validUntil and req.validFrom >= req.validUntil:
        raise errors.InvalidRequest("validFrom must be before validUntil", field="validUntil")
