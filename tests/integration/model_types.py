"""The vocabulary of the coupon model (coupon_model.py): who calls, what a
code and a book hold, and what an operation is expected to answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The problem type (slug) of every refusal the model predicts, and its status.
STATUS = {
    "forbidden": 403,
    "book-not-found": 404,
    "code-not-found": 404,
    "idempotency-key-reused": 409,
    "book-not-active": 409,
    "user-limit-reached": 409,
    "book-exhausted": 409,
    "code-already-assigned": 409,
    "code-not-assigned": 409,
    "book-mismatch": 409,
    "not-locked": 409,
    "code-locked": 423,
    "code-redeemed": 423,
}
# The fields of a coupon the model predicts (assign, unlock, list).
VIEW_FIELDS = ("code", "couponBookId", "assignedTo", "status", "locked", "timesRedeemed")


@dataclass(frozen=True)
class Caller:
    """Who sends a request: a back-end acts for anyone, an end user for itself."""

    sub: str
    acts_for_anyone: bool

    def may_act_for(self, user: str) -> bool:
        return self.acts_for_anyone or user == self.sub


@dataclass
class Expected:
    """What the service must answer, and the events the book's stream must gain."""

    problem: str | None = None  # None: success
    book: str | None = None  # the book whose stream gains `events`
    events: list[dict[str, str]] = field(default_factory=list)
    body: dict[str, Any] = field(default_factory=dict)  # fields the success body must hold
    replayed: bool = False


def refused(problem: str) -> Expected:
    return Expected(problem=problem)


@dataclass
class CodeState:
    book: str
    owner: str | None = None
    times: int = 0
    version: int = 0
    lock_token: str | None = None  # a live lock
    expired_at: int | None = None  # an expired lock still in the locks zset (recorded lazily)
    old_tokens: list[str] = field(default_factory=list)


@dataclass
class BookState:
    id: str
    max_per_user: int | None
    redeem_limit: int | None  # None: unlimited
    active: bool
    codes: list[str] = field(default_factory=list)
    events: int = 0
