"""The checkout path: assign, lock, unlock, redeem and list codes.

Every state change is one script call; the Python around it only finds the
book, checks who may act, and shapes the reply.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass

from couponsvc import errors
from couponsvc.auth import Principal
from couponsvc.codes import is_valid_code
from couponsvc.schemas import Coupon, LockResult, Redemption
from couponsvc.store import VIEW_LEN, Slot, Store, parse_view, raise_for
from couponsvc.types import ScriptReply

_BOOK_NUMBER = re.compile(r"[0-9]{1,19}")  # ASCII digits only: int() takes others


@dataclass(frozen=True, slots=True)
class Idempotency:
    """An `Idempotency-Key` and the fingerprint of the request that carried it."""

    caller: str
    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """A coupon, and whether it is the stored reply to an earlier request."""

    coupon: Coupon
    replayed: bool


@dataclass(frozen=True, slots=True)
class Page:
    coupons: list[Coupon]
    next_cursor: str | None


class Coupons:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def _bind_key(self, idem: Idempotency) -> None:
        """Binds the key to this request's fingerprint across books (SET NX): the
        same key with another request is refused before anything runs. Replays
        themselves come from the record the script keeps in the book."""
        ttl_ms = self.store.settings.idempotency_ttl_seconds * 1000
        bound = await self.store.scripts.coalescer.execute(
            "SET", self.store.keys.idempotency_claim(idem.caller, idem.key), idem.fingerprint,
            "NX", "PX", ttl_ms, "GET", get=True, durable=True)
        if bound is not None and bound != idem.fingerprint:
            raise errors.IdempotencyKeyReused()

    def _idem_args(self, book: Slot, idem: Idempotency | None) -> tuple[list[str], list[str]]:
        """Extra KEYS (the idempotency record, when asked for) and ARGV."""
        if idem is None:
            return [], [""]
        ttl_ms = self.store.settings.idempotency_ttl_seconds * 1000
        return [book.keys.idempotency(idem.caller, idem.key)], [idem.fingerprint, str(ttl_ms)]

    async def _assign(self, script: str, book: Slot, user_id: str, args: list[str],
                      idem: Idempotency | None) -> ScriptReply:
        """Runs an assign script; `args` are its ARGV before the optional ones.

        The user's index of books (the books they hold codes in, so listing
        needs no KEYS/SCAN) is written by the script itself on one Redis. On a
        cluster it lives on another node, so it is written and confirmed
        before the script runs: it is always a superset of where the user
        holds codes."""
        if idem is not None:
            await self._bind_key(idem)
        index = self.store.keys.user_books(user_id)
        if self.store.settings.redis_cluster:
            await self.store.scripts.coalescer.execute("SADD", index, book.number, durable=True)
            index_keys, index_args = [], [""]
        else:
            index_keys, index_args = [index], [str(book.number)]
        k = book.keys
        idem_keys, idem_args = self._idem_args(book, idem)
        return await self.store.run(
            script,
            [k.meta, k.free, k.assigned, k.user(user_id), k.locks, k.events,
             *index_keys, *idem_keys],
            [*args, *index_args, *idem_args],
        )

    async def assign_random(self, principal: Principal, book_id: str, user_id: str,
                            idem: Idempotency | None) -> Outcome:
        principal.require_user(user_id)
        book = await self.store.book(book_id)
        reply = await self._assign("assign_random", book, user_id, [book_id, user_id], idem)
        raise_for(reply, "", principal, "assign")
        return Outcome(parse_view(reply, 1), reply[0] == "replayed")

    async def assign_code(self, principal: Principal, code: str, user_id: str,
                          book_id: str | None, idem: Idempotency | None) -> Outcome:
        principal.require_user(user_id)
        book = await self.store.book_of_code(code)
        reply = await self._assign("assign_code", book, user_id, [code, user_id, book_id or ""],
                                   idem)
        raise_for(reply, code, principal, "assign")
        return Outcome(parse_view(reply, 1), reply[0] == "replayed")

    async def lock(self, principal: Principal, code: str, user_id: str, ttl_seconds: int | None,
                   idem: Idempotency | None = None,
                   book_id: str | None = None) -> tuple[LockResult, bool]:
        principal.require_user(user_id)
        book = await self._book_of(code, book_id)
        if idem is not None:
            await self._bind_key(idem)
        k = book.keys
        token = secrets.token_urlsafe(18)
        ttl_ms = "" if ttl_seconds is None else str(ttl_seconds * 1000)
        idem_keys, idem_args = self._idem_args(book, idem)
        reply = await self.store.run(
            "lock", [k.meta, k.assigned, k.lock(code), k.locks, k.events, *idem_keys],
            [code, user_id, token, ttl_ms, *idem_args],
        )
        await self._raise_for(reply, code, principal, "lock",
                              book if book_id is not None else None)
        coupon = parse_view(reply, 1)
        assert coupon.lockedUntil is not None
        result = LockResult(code=code, couponBookId=coupon.couponBookId, assignedTo=user_id,
                            lockToken=str(reply[1 + VIEW_LEN]), lockedUntil=coupon.lockedUntil)
        return result, reply[0] == "replayed"

    async def unlock(self, principal: Principal, code: str, user_id: str,
                     token: str | None, book_id: str | None = None) -> Coupon:
        """Gives a lock back with its token; coupons:admin may leave the token
        out to release any lock of the code (recorded as forced)."""
        principal.require_user(user_id)
        if token is None and not principal.is_admin:
            raise errors.Forbidden("unlocking without the lockToken needs the coupons:admin "
                                   "scope; send the lock's token")
        book = await self._book_of(code, book_id)
        k = book.keys
        reply = await self.store.run(
            "unlock", [k.meta, k.assigned, k.lock(code), k.locks, k.events],
            [code, user_id, token or ""],
        )
        await self._raise_for(reply, code, principal, "unlock",
                              book if book_id is not None else None)
        return parse_view(reply, 1)

    async def redeem(self, principal: Principal, code: str, user_id: str, token: str | None,
                     idem: Idempotency | None,
                     book_id: str | None = None) -> tuple[Redemption, bool]:
        principal.require_user(user_id)
        book = await self._book_of(code, book_id)
        if idem is not None:
            await self._bind_key(idem)
        k = book.keys
        idem_keys, idem_args = self._idem_args(book, idem)
        reply = await self.store.run(
            "redeem", [k.meta, k.assigned, k.lock(code), k.locks, k.events, *idem_keys],
            [code, user_id, token or "", *idem_args],
        )
        await self._raise_for(reply, code, principal, "redeem",
                              book if book_id is not None else None)
        coupon = parse_view(reply, 1)
        left = int(reply[1 + VIEW_LEN])
        assert coupon.lastRedeemedAt is not None
        redemption = Redemption(
            code=code, couponBookId=coupon.couponBookId, assignedTo=user_id,
            timesRedeemed=coupon.timesRedeemed, redeemedAt=coupon.lastRedeemedAt,
            redemptionsLeft=None if left < 0 else left,
        )
        return redemption, reply[0] == "replayed"

    async def _book_of(self, code: str, book_id: str | None) -> Slot:
        """The book a lock, unlock or redeem acts in. A caller may name it (the
        assign's answer carries couponBookId): that saves looking the code up
        in its directory bucket, a round trip before the script whenever this
        process has not seen the code. The script then finds the code
        assigned there, or not (`_raise_for`)."""
        if book_id is None:
            return await self.store.book_of_code(code)
        return await self.store.book(book_id)

    async def _raise_for(self, reply: ScriptReply, code: str, principal: Principal,
                         action: str, named: Slot | None) -> None:
        """`raise_for`; when the caller `named` a book that does not hold the
        code assigned, first whether it is the code's book at all: 409
        book-mismatch (404 for an end user) rather than "not assigned"."""
        if named is not None and reply[0] == "not_assigned":
            actual = await self.store.book_of_code(code)  # 404 for an unknown code
            if actual.number != named.number:
                raise_for(["book_mismatch"], code, principal, action)
        raise_for(reply, code, principal, action)

    async def list_for_user(self, principal: Principal, user_id: str, book_id: str | None,
                            limit: int, cursor: str | None) -> Page:
        principal.require_user(user_id)
        start_number, after = decode_cursor(cursor) if cursor is not None else (0, "")
        if book_id is not None:
            numbers = [(await self.store.book(book_id)).number]
        else:
            numbers = await self.store.user_book_numbers(user_id)
        found: list[tuple[int, Coupon]] = []
        # One more than a page tells whether a next page exists.
        for number in (n for n in numbers if n >= start_number):
            want = limit + 1 - len(found)
            if want <= 0:
                break
            k = self.store.keys.book(number)
            reply = await self.store.run(
                "list_user_codes", [k.meta, k.user(user_id), k.assigned, k.locks],
                [after if number == start_number else "", want],
            )
            if reply[0] != "ok":
                continue
            found.extend((number, parse_view(reply, at))
                         for at in range(2, len(reply), VIEW_LEN))
        coupons = [coupon for _, coupon in found[:limit]]
        if len(found) <= limit:
            return Page(coupons, None)
        last_number, last = found[limit - 1]
        return Page(coupons, encode_cursor(last_number, last.code))


def encode_cursor(book_number: int, last_code: str) -> str:
    return base64.urlsafe_b64encode(f"{book_number}:{last_code}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The (book number, last code) of a cursor `encode_cursor` made. Anything
    else is a 400, even what base64 and int() would forgive (padding, skipped
    characters, spare bits, a sign, spaces, leading zeros, non-ASCII digits)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError):  # ValueError: non-ASCII input, not UTF-8
        raise _not_issued() from None
    number, colon, last_code = raw.partition(":")
    if not (colon and _BOOK_NUMBER.fullmatch(number) and is_valid_code(last_code)):
        raise _not_issued()
    # Re-encoding is the one spelling the service issues: it rules out the rest.
    if encode_cursor(int(number), last_code) != cursor:
        raise _not_issued()
    return int(number), last_code


def _not_issued() -> errors.InvalidRequest:
    return errors.InvalidRequest("cursor is not one this service issued", field="cursor")
