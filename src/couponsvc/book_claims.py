"""An Idempotency-Key on `POST /coupons`: which book a key made, or is making.

The key's claim (`{prefix}:{idem:DIGEST}`, the key the checkout routes bind
too) holds the request's fingerprint and the id chosen for the new book,
then a mark once the book is made:

- first use: `SET NX` with a short expiry, renewed while the book is being
  made; once it is, the mark and the full idempotency window;
- the same request again: the book as it is now (a replay) once made; a 409
  `idempotency-key-in-progress` with Retry-After while the first is at work;
- a create that fails releases the claim, so its retry can make the book;
- another request with the key: 409 `idempotency-key-reused`.

Renewing, marking and releasing go through `settle_claim.lua`, which acts
only while the claim is still this create's: one key never makes two books.
Every write waits for replicas like any other change (`durable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from couponsvc import errors
from couponsvc.coupons import Idempotency
from couponsvc.store import Store

log = logging.getLogger("couponsvc")

# The claim's expiry while its book is being made, renewed every third of it:
# a create that dies without releasing it (its process killed) holds the key
# for at most this long.
IN_PROGRESS_SECONDS = 30
MADE = "made"


async def claim_book_id(store: Store, idem: Idempotency, book_id: str) -> tuple[str, bool]:
    """(book id, made earlier): `book_id`, which this request now holds the
    key for, or the id of the book an earlier request with the key made."""
    held = await store.scripts.coalescer.execute(
        "SET", store.keys.idempotency_claim(idem.caller, idem.key),
        f"{idem.fingerprint} {book_id}", "NX", "PX", IN_PROGRESS_SECONDS * 1000, "GET",
        get=True, durable=True)
    if held is None:
        return book_id, False
    fingerprint, _, rest = str(held).partition(" ")
    if fingerprint != idem.fingerprint:
        raise errors.IdempotencyKeyReused()
    earlier_id, _, state = rest.partition(" ")
    if state != MADE:
        raise errors.IdempotencyKeyInProgress(
            "a request with this Idempotency-Key is still creating its book", retry_after=1)
    return earlier_id, True


@contextlib.asynccontextmanager
async def holding_claim(store: Store, idem: Idempotency, book_id: str) -> AsyncIterator[None]:
    """Keeps the claim while the book is made (renewing it), then marks it
    made for the idempotency window; on a failure, releases it."""
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

    renewing = asyncio.create_task(renew())
    try:
        yield
    except BaseException:
        renewing.cancel()
        with contextlib.suppress(Exception):  # the error being raised matters more
            await settle("", 0)
        raise
    renewing.cancel()
    if not await settle(f"{held} {MADE}", store.settings.idempotency_ttl_seconds):
        log.warning("book %s was made, but its Idempotency-Key claim was lost meanwhile",
                    book_id)
