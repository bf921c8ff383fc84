"""Every Redis key name the service uses, built in one place.

Layout (documented for operators in docs/redis-keys.md):

    {prefix}:books                       hash   book id (uuid) -> book number
    {prefix}:book-seq                    string last book number handed out
    {prefix}:{book:N}:meta               hash   the book's settings and counters
    {prefix}:{book:N}:free               set    codes not yet assigned
    {prefix}:{book:N}:assigned           hash   code -> "owner|assignedAt|timesRedeemed|
                                                 lastRedeemedAt|version"
    {prefix}:{book:N}:locks              zset   code -> lock expiry (ms), mirrors the lock keys
    {prefix}:{book:N}:lock:CODE          string lock token, SET NX PX
    {prefix}:{book:N}:user:USER          zset   the user's codes in this book (score 0, lex order)
    {prefix}:{book:N}:idem:DIGEST        list   fingerprint, then the stored result
    {prefix}:{book:N}:events             stream outbox of state changes
    {prefix}:{dir:TT}:BUCKET             hash   code -> book number (immutable directory)
    {prefix}:{idem:DIGEST}               string the fingerprint an idempotency key is bound to
                                                (for a create, then the book id and `made`)
    {prefix}:{idem:DIGEST}:lease         string the token of the request making a create's book
    {prefix}:{user:USER}:books           set    book numbers the user has codes in
    {prefix}:ratelimit:{LIMITER/...}     string abuse-limit counters, named by `limits`
                                                 (the part after the prefix; see ratelimit.py)

All keys one script call touches share one hash tag (the book's `{book:N}`, or
for claim_codes one directory tag `{dir:TT}`), so every script runs unchanged
on Redis Cluster. The prefix sits outside the braces.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

# 65,536 directory buckets keep each bucket a small listpack-encoded hash up to
# a few million codes. Their hash tag is the bucket's top byte: 256 tags spread
# the directory over a cluster, and a bulk load claims the codes of one tag
# (256 buckets) in one script call instead of one call per bucket.
DIRECTORY_BUCKETS = 1 << 16
DIRECTORY_TAGS = 1 << 8
BOOK_KEYS_CACHED = 10_000


@dataclass(frozen=True, slots=True)
class BookKeys:
    """The keys of one book; every one carries the same hash tag. The fixed
    names are built once per book (`Keys.book` keeps them), not per request."""

    tag: str
    meta: str = field(init=False)
    free: str = field(init=False)
    assigned: str = field(init=False)
    locks: str = field(init=False)
    events: str = field(init=False)

    def __post_init__(self) -> None:
        for name in ("meta", "free", "assigned", "locks", "events"):
            object.__setattr__(self, name, f"{self.tag}:{name}")

    def lock(self, code: str) -> str:
        return f"{self.tag}:lock:{code}"

    def user(self, user_id: str) -> str:
        return f"{self.tag}:user:{user_id}"

    def idempotency(self, caller: str, key: str) -> str:
        # Callers and keys are client-chosen strings; a digest keeps the key
        # name short and free of separators.
        return f"{self.tag}:idem:{_digest(caller, key)}"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one deployment (one prefix)."""

    prefix: str = "cb"
    # Each book's keys, built once (emptied when full: bounded).
    _books: dict[int, BookKeys] = field(default_factory=dict, init=False, compare=False,
                                        repr=False)

    @property
    def books(self) -> str:
        return f"{self.prefix}:books"

    @property
    def book_seq(self) -> str:
        return f"{self.prefix}:book-seq"

    def book(self, number: int) -> BookKeys:
        keys = self._books.get(number)
        if keys is None:
            if len(self._books) >= BOOK_KEYS_CACHED:
                self._books.clear()
            keys = self._books[number] = BookKeys(f"{self.prefix}:{{book:{number}}}")
        return keys

    def directory(self, code: str) -> str:
        return self.directory_of_bucket(directory_bucket(code))

    def directory_of_bucket(self, bucket: int) -> str:
        return f"{self.prefix}:{{dir:{directory_tag(bucket):02x}}}:{bucket:04x}"

    def idempotency_claim(self, caller: str, key: str) -> str:
        """Binds a caller's Idempotency-Key to one request across all books."""
        return f"{self.prefix}:{{idem:{_digest(caller, key)}}}"

    def idempotency_lease(self, caller: str, key: str) -> str:
        """Held by the one request at a time that makes the book of a create's key."""
        return f"{self.idempotency_claim(caller, key)}:lease"

    def user_books(self, user_id: str) -> str:
        return f"{self.prefix}:{{user:{user_id}}}:books"

    @property
    def rate_limits(self) -> str:
        """The prefix handed to `limits`, which names its counters below it."""
        return f"{self.prefix}:ratelimit"


def _digest(caller: str, key: str) -> str:
    return hashlib.sha256(f"{caller}\0{key}".encode()).hexdigest()[:32]


def directory_bucket(code: str) -> int:
    """The directory bucket of a code: stable across processes and versions."""
    return zlib.crc32(code.encode()) % DIRECTORY_BUCKETS


def directory_buckets(codes: Iterable[str]) -> list[int]:
    """directory_bucket of each code, in one comprehension (bulk loads)."""
    crc32, buckets = zlib.crc32, DIRECTORY_BUCKETS
    return [crc32(encoded) % buckets for encoded in map(str.encode, codes)]


def directory_tag(bucket: int) -> int:
    """The hash tag a bucket shares with 255 others (its top byte)."""
    return bucket * DIRECTORY_TAGS // DIRECTORY_BUCKETS
