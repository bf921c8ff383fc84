"""An Idempotency-Key on `POST /coupons`: which book a key made, or is making.

The key's claim (`{prefix}:{idem:DIGEST}`, the key the checkout routes bind
too) holds the request's fingerprint and the id chosen for the new book,
then a mark once the book is made:

- first use: `SET NX` with a short expiry while the book is being made, then
  the full idempotency window once it is;
- the same request again: the book as it is now (a replay) once made; a 409
  `idempotency-key-in-progress` with Retry-After while the first is at work;
  after a failure the short expiry frees the key for a new attempt;
- another request with the key: 409 `idempotency-key-reused`.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from couponsvc import errors
from couponsvc.coupons import Idempotency
from couponsvc.keys import Keys

log = logging.getLogger("couponsvc")

# Long enough for a book with a million initial codes (a few seconds here),
# short enough that a retry after a failed attempt waits for at most this.
IN_PROGRESS_SECONDS = 60
MADE = "made"


async def claim_book_id(redis: Redis, keys: Keys, idem: Idempotency,
                        book_id: str) -> tuple[str, bool]:
    """(book id, made earlier): `book_id`, which this request now holds the
    key for, or the id of the book an earlier request with the key made."""
    held = await redis.set(keys.idempotency_claim(idem.caller, idem.key),
                           f"{idem.fingerprint} {book_id}", nx=True,
                           px=IN_PROGRESS_SECONDS * 1000, get=True)
    if held is None:
        return book_id, False
    fingerprint, _, rest = str(held).partition(" ")
    if fingerprint != idem.fingerprint:
        raise errors.IdempotencyKeyReused()
    earlier_id, _, state = rest.partition(" ")
    if state != MADE:
        raise errors.IdempotencyKeyInProgress(
            "a request with this Idempotency-Key is still creating its book",
            retry_after=1)
    return earlier_id, True


async def book_made(redis: Redis, keys: Keys, idem: Idempotency, book_id: str,
                    ttl_seconds: int) -> None:
    """Marks the claim: retries now get this book, for the whole window."""
    kept = await redis.set(keys.idempotency_claim(idem.caller, idem.key),
                           f"{idem.fingerprint} {book_id} {MADE}", xx=True,
                           px=ttl_seconds * 1000)
    if not kept:  # the claim outlived its short expiry: the book took that long
        log.warning("book %s was made after its Idempotency-Key claim expired", book_id)
