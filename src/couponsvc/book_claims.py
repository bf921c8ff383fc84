"""An Idempotency-Key on `POST /coupons`: which book a key makes, and who is
making it now.

Two keys in one slot (`{prefix}:{idem:DIGEST}`, the key the checkout routes
bind too, and its `:lease`):

- the claim binds the key, for the whole idempotency window, to the
  request's fingerprint and the id chosen for the book on first use; once
  the book is made it is marked `made`;
- the lease names the one request making that book now. It expires after
  30 s unless renewed, so a create whose process died frees it by itself.

A retry of the same request gets the book as it is now once it is made (a
replay); while another request holds the lease, a 409
`idempotency-key-in-progress` with Retry-After; otherwise (the first failed
part-way, or died) it takes the lease and makes the same book, every step of
which can be done again (`Books._make`). The book's id never changes for the
window, so one key never makes two books. Another request with the key:
409 `idempotency-key-reused`.

`claim_create.lua` and `settle_create.lua` do each of these in one step.
Every write waits for replicas like any other change (`durable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
from collections.abc import AsyncIterator

from couponsvc import errors
from couponsvc.coupons import Idempotency
from couponsvc.store import Store

log = logging.getLogger("couponsvc")

# The lease's expiry, renewed every third of it: a create that dies without
# releasing it holds the key for at most this long.
LEASE_SECONDS = 30


class Claimed(enum.Enum):
    """What the key's claim says of its book, for the request that asked."""

    NEW = "new"  # bound to the id this request chose: it makes the book
    RESUME = "resume"  # an earlier request began the book: this one finishes it
    MADE = "made"


async def claim_book_id(store: Store, idem: Idempotency, book_id: str,
                        token: str) -> tuple[str, Claimed]:
    """The key's book and what to do with it. For NEW and RESUME this request
    now holds the key's lease, under `token`."""
    outcome, bound = await store.run(
        "claim_create", _keys(store, idem),
        [idem.fingerprint, book_id, store.settings.idempotency_ttl_seconds * 1000,
         token, LEASE_SECONDS * 1000])
    if outcome == "reused":
        raise errors.IdempotencyKeyReused()
    if outcome == "busy":
        raise errors.IdempotencyKeyInProgress(
            "a request with this Idempotency-Key is still creating its book", retry_after=1)
    return str(bound), Claimed(outcome)


def new_token() -> str:
    return secrets.token_hex(16)


@contextlib.asynccontextmanager
async def holding_lease(store: Store, idem: Idempotency, book_id: str,
                        token: str) -> AsyncIterator[None]:
    """Keeps the lease while the book is made (renewing it), then marks the
    book made; on a failure, gives the lease up so a retry can go on at once."""
    keys = _keys(store, idem)

    async def settle(action: str, expiry_ms: int = 0) -> bool:
        return bool(await store.run("settle_create", keys, [token, action, expiry_ms]))

    async def renew() -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                await settle("renew", LEASE_SECONDS * 1000)
            except Exception:  # the next renewal may get through; the create goes on
                log.warning("could not renew the Idempotency-Key lease of book %s", book_id,
                            exc_info=True)

    renewing = asyncio.create_task(renew())
    try:
        yield
    except BaseException:
        renewing.cancel()
        # Not given up, it lapses in LEASE_SECONDS: the retry waits that long.
        with contextlib.suppress(Exception):  # the error being raised matters more
            await settle("release")
        raise
    renewing.cancel()
    try:
        marked = await settle("made", store.settings.idempotency_ttl_seconds * 1000)
    except Exception:
        # The book is made and durable: answer with it. Unmarked, the key
        # still names this book, so a retry makes nothing new either.
        log.warning("book %s was made, but its Idempotency-Key could not be marked made",
                    book_id, exc_info=True)
        return
    if not marked:
        log.info("book %s was made while another request held its Idempotency-Key's lease",
                 book_id)


def _keys(store: Store, idem: Idempotency) -> list[str]:
    return [store.keys.idempotency_claim(idem.caller, idem.key),
            store.keys.idempotency_lease(idem.caller, idem.key)]
