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
window. Another request with the key:
409 `idempotency-key-reused`.

`claim_create.lua` and `settle_create.lua` do each of these in one step. A
request that stalled past its lease while a retry took over stops at its
next step (`Lease.keep`). One key makes one book as long as Redis keeps the
key: like every idempotency record, it is not in Postgres.
Every write waits for replicas like any other change (`durable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

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
    keys = _keys(store, idem)
    try:
        outcome, bound = await store.run(
            "claim_create", keys,
            [idem.fingerprint, book_id, store.settings.idempotency_ttl_seconds * 1000,
             token, LEASE_SECONDS * 1000])
    except BaseException:
        # The script may have run (a reply lost, or this request cancelled):
        # give the lease up, or every retry would wait for it to lapse.
        with contextlib.suppress(Exception):
            await Lease(store, idem, book_id, token).settle("release")
        raise
    if outcome == "reused":
        raise errors.IdempotencyKeyReused()
    if outcome == "busy":
        raise errors.IdempotencyKeyInProgress(
            "a request with this Idempotency-Key is still creating its book", retry_after=1)
    return str(bound), Claimed(outcome)


def new_token() -> str:
    return secrets.token_hex(16)


@dataclass
class Lease:
    """This request's hold on making the key's book."""

    store: Store
    idem: Idempotency
    book_id: str
    token: str

    async def settle(self, action: Literal["renew", "release", "made"],
                     expiry_ms: int = 0) -> bool:
        reply = await self.store.run("settle_create", _keys(self.store, self.idem),
                                     [self.token, action, expiry_ms, self.idem.fingerprint,
                                      self.book_id])
        return bool(reply)

    async def keep(self) -> None:
        """Renews the lease; if another request has taken it over (this one
        stalled past LEASE_SECONDS), stops this one before it writes more."""
        if not await self.settle("renew", LEASE_SECONDS * 1000):
            raise errors.IdempotencyKeyInProgress(
                "another request with this Idempotency-Key took over making its book",
                retry_after=1)


@contextlib.asynccontextmanager
async def holding_lease(store: Store, idem: Idempotency, book_id: str,
                        token: str) -> AsyncIterator[Lease]:
    """Keeps the lease while the book is made (renewing it in the background;
    the create also calls `Lease.keep` between its steps), then marks the book
    made; on a failure, gives the lease up so a retry can go on at once."""
    lease = Lease(store, idem, book_id, token)

    async def renew() -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                await lease.settle("renew", LEASE_SECONDS * 1000)
            except Exception:  # the next renewal may get through; the create goes on
                log.warning("could not renew the Idempotency-Key lease of book %s", book_id,
                            exc_info=True)

    renewing = asyncio.create_task(renew())
    try:
        yield lease
    except BaseException:
        renewing.cancel()
        # Not given up, it lapses in LEASE_SECONDS: the retry waits that long.
        with contextlib.suppress(Exception):  # the error being raised matters more
            await lease.settle("release")
        raise
    renewing.cancel()
    try:
        marked = await lease.settle("made", store.settings.idempotency_ttl_seconds * 1000)
    except Exception:
        # The book is made and durable: answer with it. Unmarked, the key
        # still names this book, so a retry makes nothing new either.
        log.warning("book %s was made, but its Idempotency-Key could not be marked made",
                    book_id, exc_info=True)
        return
    if not marked:
        log.warning("book %s was made, but its Idempotency-Key is another request's now",
                    book_id)


def _keys(store: Store, idem: Idempotency) -> list[str]:
    return [store.keys.idempotency_claim(idem.caller, idem.key),
            store.keys.idempotency_lease(idem.caller, idem.key)]
