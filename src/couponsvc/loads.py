"""Bulk loads of codes into a book: the codes cut into chunks of neighbouring
directory buckets, each made durable in Postgres, then claimed in the
directory and added to the book in Redis, the two stages overlapping."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from couponsvc import codes as coderules
from couponsvc import errors
from couponsvc.keys import directory_buckets, directory_tag
from couponsvc.schemas import Refused, UploadResult
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


@dataclass
class LoadOutcome:
    """What one request did with each code: added, or refused and why."""

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


async def claim(store: Store, book: Located, codes: Buckets, in_other_book: list[str],
                only_new: bool = False) -> list[str]:
    """Claims codes for the book in the directory; returns those now the book's."""
    # One script call per directory hash tag, naming that tag's buckets,
    # each followed by its count of codes and the codes.
    by_tag: dict[int, list[int]] = defaultdict(list)
    for bucket in codes:
        by_tag[directory_tag(bucket)].append(bucket)
    directory_key = store.keys.directory_of_bucket
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
    replies = await store.scripts.run_many("claim_codes", calls) if calls else []
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


async def add(store: Store, book: Located, codes: Sequence[str], outcome: LoadOutcome) -> None:
    """Adds claimed codes to the book's free set, ADD_CHUNK a script call."""
    keys = [book.keys.meta, book.keys.free, book.keys.assigned, book.keys.events]
    chunks = [codes[start:start + ADD_CHUNK] for start in range(0, len(codes), ADD_CHUNK)]
    replies = await store.scripts.run_many("add_codes", [(keys, c) for c in chunks])
    for chunk, reply in zip(chunks, replies, strict=True):
        if reply[0] != "ok":
            raise errors.BookNotFound(f"no coupon book {book.id}")
        flags = str(reply[1])
        if not flags.strip("a"):  # the usual case: every code added
            outcome.added += chunk
            continue
        for code, flag in zip(chunk, flags, strict=True):
            (outcome.added if flag == "a" else outcome.duplicates).append(code)


def sort_out(raw_codes: Sequence[object], outcome: LoadOutcome) -> list[str]:
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


def bucket_chunks(codes: Sequence[str]) -> list[Buckets]:
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


def chunk_codes(chunk: Buckets) -> list[str]:
    return [code for bucket_codes in chunk.values() for code in bucket_codes]


def without(chunk: Buckets, dropped: set[str]) -> Buckets:
    if not dropped:
        return chunk
    kept = {bucket: [c for c in codes if c not in dropped] for bucket, codes in chunk.items()}
    return {bucket: codes for bucket, codes in kept.items() if codes}


async def pipelined(chunks: Sequence[Buckets],
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
