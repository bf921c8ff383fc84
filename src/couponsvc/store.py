"""What the service layer shares: the Redis client, scripts, keys, look-ups,
and the translation of script replies into values and domain errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from redis.asyncio import Redis

from couponsvc import errors
from couponsvc.auth import Principal
from couponsvc.instants import datetime_to_ms, ms_to_datetime
from couponsvc.keys import BookKeys, Keys
from couponsvc.schemas import Coupon, Status
from couponsvc.scripts import Scripts
from couponsvc.settings import Settings
from couponsvc.types import ScriptReply

T = TypeVar("T")

# Fields of one code view as the scripts return it (see code_view in _prelude.lua).
VIEW_LEN = 9
# A code's book and a book id's number never change (rebuild keeps numbers),
# so look-ups are cached; the cache is emptied when full: bounded and O(1).
CACHE_LIMIT = 200_000


def optional_datetime(ms: int | str) -> datetime | None:
    return ms_to_datetime(ms) if int(ms) else None


def parse_view(reply: Sequence[Any], at: int) -> Coupon:
    book_id, code, owner, assigned_at, times, last, lock_until, status, _version = \
        reply[at:at + VIEW_LEN]
    locked_until = optional_datetime(lock_until)
    return Coupon(
        code=str(code),
        couponBookId=str(book_id),
        assignedTo=str(owner),
        status=_status(status),
        locked=locked_until is not None,
        timesRedeemed=int(times),
        assignedAt=ms_to_datetime(assigned_at),
        lockedUntil=locked_until,
        lastRedeemedAt=optional_datetime(last),
    )


def _status(value: object) -> Status:
    if value == "locked":
        return "locked"
    if value == "redeemed":
        return "redeemed"
    return "assigned"


@dataclass(frozen=True, slots=True)
class Slot:
    """Where a book's keys live: its number. Scripts return the book's id
    from its meta hash, so a stale cached number can never mislabel a reply."""

    number: int
    keys: BookKeys


@dataclass(frozen=True, slots=True)
class Located(Slot):
    """A book found by its id."""

    id: str


class Store:
    def __init__(self, redis: Redis, scripts: Scripts, settings: Settings) -> None:
        self.redis = redis
        self.scripts = scripts
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._number_by_id: dict[str, int] = {}
        self._number_by_code: dict[str, int] = {}

    def book(self, book_id: str) -> Awaitable[Located]:
        """The book with this id; from the cache without a trip to Redis (an
        awaitable either way, so callers need not care)."""
        number = self._number_by_id.get(book_id)
        if number is None:
            return self._look_up_book(book_id)
        return _ready(Located(number=number, keys=self.keys.book(number), id=book_id))

    async def _look_up_book(self, book_id: str) -> Located:
        # Through the hot path's pipelined client: redis-py's own command path
        # costs the API several times more per call.
        raw = await self.scripts.coalescer.execute("HGET", self.keys.books, book_id)
        if raw is None:
            raise errors.BookNotFound(f"no coupon book {book_id}")
        number = int(raw)
        _remember(self._number_by_id, book_id, number)
        return Located(number=number, keys=self.keys.book(number), id=book_id)

    def book_of_code(self, code: str) -> Awaitable[Slot]:
        """The book a code belongs to (cached like `book`)."""
        number = self._number_by_code.get(code)
        if number is None:
            return self._look_up_code(code)
        return _ready(Slot(number, self.keys.book(number)))

    async def _look_up_code(self, code: str) -> Slot:
        # A code seen for the first time by this process: every lock or redeem
        # of a code another process assigned. Pipelined like `_look_up_book`.
        raw = await self.scripts.coalescer.execute("HGET", self.keys.directory(code), code)
        if raw is None:
            raise errors.CodeNotFound(_unknown_code(code))
        number = int(raw)
        _remember(self._number_by_code, code, number)
        return Slot(number, self.keys.book(number))

    async def user_book_numbers(self, user_id: str) -> list[int]:
        """The numbers of the books where a user holds codes, ascending.
        Pipelined like the look-ups: a burst of listings must not take a
        pooled connection each."""
        members = await self.scripts.coalescer.execute("SMEMBERS", self.keys.user_books(user_id))
        return sorted(int(m) for m in members)

    def run(self, name: str, keys: Sequence[str],
            args: Sequence[Any] = ()) -> Awaitable[ScriptReply]:
        return self.scripts.run(name, keys, args)


def _ready(value: T) -> Awaitable[T]:
    """An awaitable that is already done: a cache hit costs no coroutine."""
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def _unknown_code(code: str) -> str:
    return f"no coupon code {code} for this caller"


def raise_for(reply: ScriptReply, code: str, principal: Principal, action: str) -> None:
    """Turns a script's error status into the domain error a client sees.

    An end user (no write scope) gets the same 404 for an unknown code and for
    another user's code, so codes cannot be probed.
    """
    status = reply[0]
    if status in ("ok", "replayed"):
        return
    hide = not principal.acts_for_anyone
    if status in ("not_owner", "not_assigned", "code_not_found") and hide:
        raise errors.CodeNotFound(_unknown_code(code))
    match status:
        case "book_not_found":
            raise errors.BookNotFound("the code's book no longer exists")
        case "code_not_found":
            raise errors.CodeNotFound(_unknown_code(code))
        case "book_mismatch" if hide:
            raise errors.CodeNotFound(_unknown_code(code))
        case "book_mismatch":
            raise errors.BookMismatch(f"{code} belongs to another book")
        case "not_owner" if action == "assign":
            raise errors.CodeAlreadyAssigned(f"{code} is assigned to another user")
        case "not_owner" | "not_assigned":
            raise errors.CodeNotAssigned(f"{code} is not assigned to this user; {action} refused")
        case "book_not_active":
            raise errors.BookNotActive(f"the book is outside its validity window; {action} refused")
        case "user_limit_reached":
            raise errors.UserLimitReached(f"the user already has {reply[1]} codes of this book")
        case "book_exhausted":
            raise errors.BookExhausted("every code of this book is already assigned")
        case "locked":
            until = ms_to_datetime(reply[1])
            retry = max(1, -(-(int(reply[1]) - datetime_to_ms(datetime.now(UTC))) // 1000))
            stamp = until.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            raise errors.CodeLocked(f"{code} is locked until {stamp}",
                                    locked_until=stamp, retry_after=retry)
        case "redeemed":
            raise errors.CodeRedeemed(f"{code} was redeemed {reply[1]} time(s) and has none left")
        case "not_locked":
            raise errors.NotLocked(f"{code} is not locked")
        case "idempotency_mismatch":
            raise errors.IdempotencyKeyReused()
    raise RuntimeError(f"unexpected script status {status!r}")
