"""An Idempotency-Key on `POST /coupons`: which book a key made, or is making.

The key's claim (`{prefix}:{idem:DIGEST}`, the key the checkout routes bind
too) holds the request's fingerprint and the id chosen for the new book,
then a mark once the book is made:

- first use: `SET NX` with a short expiry, renewed while the book is being
  made; once it is, the mark `made` and the full idempotency window;
- the same request again: the book as it is now (a replay) once made; a 409
  `idempotency-key-in-progress` with Retry-After while the first is at work;
- a create that fails before its book exists releases the claim, so its
  retry can make the book; one that fails while making the book's initial
  codes marks it `unfinished` for the idempotency window, and its retry
  takes the claim over and makes the codes still missing, in the same book;
- another request with the key: 409 `idempotency-key-reused`.

Renewing, marking, releasing and taking over go through `settle_claim.lua`,
which acts only while the claim holds what this create expects: one key
never makes two books. Every write waits for replicas like any other change
(`durable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from couponsvc import errors
from couponsvc.coupons import Idempotency
from couponsvc.store import Store

log = logging.getLogger("couponsvc")

# The claim's expiry while its book is being made, renewed every third of it:
# a create that dies without releasing it (its process killed) holds the key
# for at most this long.
IN_PROGRESS_SECONDS = 30


class BookState(enum.Enum):
    """What the key's book is, as the claim says (its last word, if any)."""

    NEW = ""  # not made yet: this request makes it
    MADE = "made"
    UNFINISHED = "unfinished"  # exists, but its initial codes are not all made


@dataclass
class Progress:
    """How far the create holding the claim got; set by the create."""

    book_exists: bool = False


async def claim_book_id(store: Store, idem: Idempotency,
                        book_id: str) -> tuple[str, BookState]:
    """The book this request works on: `book_id` (NEW), which it now holds the
    key for, or the book an earlier request with the key made (MADE) or left
    unfinished (UNFINISHED: this request now holds the key to finish it)."""
    claim = store.keys.idempotency_claim(idem.caller, idem.key)
    held = await store.scripts.coalescer.execute(
        "SET", claim, f"{idem.fingerprint} {book_id}", "NX", "PX", IN_PROGRESS_SECONDS * 1000,
        "GET", get=True, durable=True)
    if held is None:
        return book_id, BookState.NEW
    fingerprint, _, rest = str(held).partition(" ")
    if fingerprint != idem.fingerprint:
        raise errors.IdempotencyKeyReused()
    earlier_id, _, mark = rest.partition(" ")
    if mark == BookState.MADE.value:
        return earlier_id, BookState.MADE
    if mark == BookState.UNFINISHED.value and await store.run(
            "settle_claim", [claim],
            [held, f"{idem.fingerprint} {earlier_id}", IN_PROGRESS_SECONDS * 1000]):
        return earlier_id, BookState.UNFINISHED
    raise errors.IdempotencyKeyInProgress(
        "a request with this Idempotency-Key is still creating its book", retry_after=1)


@contextlib.asynccontextmanager
async def holding_claim(store: Store, idem: Idempotency, book_id: str,
                        progress: Progress) -> AsyncIterator[None]:
    """Keeps the claim while the book is made (renewing it), then marks it
    made for the idempotency window. On a failure it releases the claim, or,
    once `progress` says the book exists, marks it unfinished."""
    claim = store.keys.idempotency_claim(idem.caller, idem.key)
    held = f"{idem.fingerprint} {book_id}"

    async def settle(value: str, ttl_seconds: int) -> bool:
        reply = await store.run("settle_claim", [claim],
                                [held, value, ttl_seconds * 1000])
        return bool(reply)

    async def renew() -> None:
        while True:
            await asyncio.sleep(IN_PROGRESS_SECONDS / 3)
            try:
                await settle(held, IN_PROGRESS_SECONDS)
            except Exception:  # the next renewal may get through; the create goes on
                log.warning("could not renew the Idempotency-Key claim of book %s", book_id,
                            exc_info=True)

    window = store.settings.idempotency_ttl_seconds
    renewing = asyncio.create_task(renew())
    try:
        yield
    except BaseException:
        renewing.cancel()
        with contextlib.suppress(Exception):  # the error being raised matters more
            if progress.book_exists:
                await settle(f"{held} {BookState.UNFINISHED.value}", window)
            else:
                await settle("", 0)
        raise
    renewing.cancel()
    try:
        marked = await settle(f"{held} {BookState.MADE.value}", window)
    except Exception:
        # The book is made and durable: answer with it. The key's claim
        # lapses in IN_PROGRESS_SECONDS, and a retry after that makes another.
        log.warning("book %s was made, but its Idempotency-Key claim could not be marked",
                    book_id, exc_info=True)
        return
    if not marked:
        log.warning("book %s was made, but its Idempotency-Key claim was lost meanwhile",
                    book_id)
