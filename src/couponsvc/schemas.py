"""Request and response bodies. Decoding validates; building a Struct does not.

Field names follow the seed API (camelCase). Input and output types are
separate so a client can never set a field it should only read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

# msgspec checks a pattern with re.search, and Python's `$` also matches
# before a final newline: END makes "alice\n" no user id. (JSON Schema's
# ECMAScript regexes read it the same way.)
END = r"(?!\n)$"
CODE_PATTERN = r"^[A-Za-z0-9_-]{1,64}" + END
USER_PATTERN = r"^[A-Za-z0-9._@+:-]{1,128}" + END
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}" + END
# A book id as a client may send it: UUIDs are case-insensitive (RFC 9562), so
# one in upper case is taken and read in lower case, as in a path.
BOOK_ID_PATTERN = UUID_PATTERN.replace("a-f", "a-fA-F")
# '#' stands for one random character; everything else is literal.
CODE_TEMPLATE_PATTERN = r"^[A-Za-z0-9_#-]{1,64}" + END

Code = Annotated[str, Meta(pattern=CODE_PATTERN, description="1-64 of A-Z a-z 0-9 _ -")]
UserId = Annotated[str, Meta(pattern=USER_PATTERN, description="1-128 of A-Z a-z 0-9 . _ @ + : -")]
BookId = Annotated[str, Meta(pattern=BOOK_ID_PATTERN,
                             description="The book's id (a UUID; answers give it in lower case)")]
CodeTemplate = Annotated[
    str,
    Meta(pattern=CODE_TEMPLATE_PATTERN,
         description="'#' is a random character of 23456789ABCDEFGHJKLMNPQRSTUVWXYZ"),
]
Timestamp = Annotated[datetime, Meta(
    tz=True, description="RFC 3339 date-time with offset, from 1970 to 9998 (UTC)")]
# What the service sends: always in UTC. tz=True is what makes msgspec's schema
# say `format: date-time` (a bare datetime may be naive, which RFC 3339 is not).
UtcTimestamp = Annotated[datetime, Meta(tz=True, description="RFC 3339 date-time in UTC")]
PositiveInt = Annotated[int, Meta(ge=1, le=1_000_000_000)]
TtlSeconds = Annotated[int, Meta(ge=1, le=86_400)]
LockToken = Annotated[str, Meta(min_length=1, max_length=128)]
Status = Literal["assigned", "locked", "redeemed"]


class Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Every request body: unknown fields are an error, not silently dropped."""


class Out(msgspec.Struct, omit_defaults=True):
    """Every response body."""


# --- requests --------------------------------------------------------------


# Free text is stored in Postgres, whose text refuses NUL; control characters
# other than tab and line breaks have no business in a name either.
NAME_PATTERN = r"^[^\x00-\x1f\x7f]*" + END
DESCRIPTION_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"  # may end in a line break


class CreateBook(Base):
    name: Annotated[str, Meta(min_length=1, max_length=200, pattern=NAME_PATTERN,
                              description="No control characters")]
    description: Annotated[str, Meta(max_length=2000, pattern=DESCRIPTION_PATTERN,
                                     description="No control characters but tab and "
                                                 "line breaks")] = ""
    multipleRedeemsAllowed: bool = False
    maxRedeemsPerCode: PositiveInt | None = None
    maxPerUser: PositiveInt | None = None
    lockTtlSeconds: TtlSeconds = 300
    validFrom: Timestamp | None = None
    validUntil: Timestamp | None = None
    initialCouponAmount: Annotated[int, Meta(ge=0)] = 0
    codePattern: CodeTemplate | None = None


class Generate(Base):
    pattern: CodeTemplate
    count: Annotated[int, Meta(ge=1)]


class UploadCodes(Base):
    couponBookId: BookId
    # Each string is checked on its own: a malformed code is listed in
    # refused.invalid, not fatal. A non-string item is a 400 like any wrong type.
    codes: list[str] | None = None
    generate: Generate | None = None

    def __post_init__(self) -> None:
        self.couponBookId = self.couponBookId.lower()


class AssignRandom(Base):
    userId: UserId
    couponBookId: BookId

    def __post_init__(self) -> None:
        self.couponBookId = self.couponBookId.lower()


class AssignCode(Base):
    userId: UserId
    couponBookId: BookId | None = None

    def __post_init__(self) -> None:
        if self.couponBookId is not None:
            self.couponBookId = self.couponBookId.lower()


# The code's book, optional in a lock, unlock or redeem: named, it spares the
# service a look-up of the code (coupons.Coupons._book_of).
CodeBookId = Annotated[BookId | None, Meta(
    description="The code's book, as the assign answered it; optional. Given, "
                "the service need not look the code up first; a book that does "
                "not hold the code is 409 book-mismatch")]


class ActsOnCode(Base):
    """A lock, unlock or redeem: the acting user, and optionally the code's book."""

    userId: UserId
    couponBookId: CodeBookId = None

    def __post_init__(self) -> None:
        if self.couponBookId is not None:
            self.couponBookId = self.couponBookId.lower()


class Lock(ActsOnCode):
    ttlSeconds: TtlSeconds | None = None


class Unlock(ActsOnCode):
    # An operator may release a lock whose token was lost (it would hold
    # until it ran out).
    lockToken: Annotated[LockToken | None, Meta(
        description="Required (else 403), except from a coupons:admin token")] = None


class Redeem(ActsOnCode):
    lockToken: LockToken | None = None


# --- responses -------------------------------------------------------------


class BookCounts(Out):
    total: int
    available: int
    assigned: int
    locked: int
    redeemed: int


class Book(Out):
    id: str
    name: str
    description: str
    multipleRedeemsAllowed: bool
    lockTtlSeconds: int
    createdAt: UtcTimestamp
    updatedAt: UtcTimestamp
    counts: BookCounts
    maxRedeemsPerCode: int | None = None
    maxPerUser: int | None = None
    validFrom: UtcTimestamp | None = None
    validUntil: UtcTimestamp | None = None


class Refused(Out):
    duplicates: list[str]
    inOtherBook: list[str]
    invalid: list[str]


class UploadResult(Out):
    couponBookId: str
    added: int
    refusedCount: int
    refused: Refused
    # Generated uploads list the new codes so the caller can distribute them.
    codes: list[str] | None = None
    shortfall: Annotated[int, Meta(
        description="Generated codes asked for but not made: the pattern's unused codes "
                    "ran short (a longer pattern helps). Absent when every one was made.")] = 0


class Coupon(Out):
    """A code as its owner sees it (the seed's CouponCode)."""

    code: str
    couponBookId: str
    assignedTo: str
    status: Status
    locked: bool
    timesRedeemed: int
    assignedAt: UtcTimestamp
    lockedUntil: UtcTimestamp | None = None
    lastRedeemedAt: UtcTimestamp | None = None


class LockResult(Out):
    code: str
    couponBookId: str
    assignedTo: str
    lockToken: str
    lockedUntil: UtcTimestamp


class Redemption(Out):
    code: str
    couponBookId: str
    assignedTo: str
    timesRedeemed: int
    redeemedAt: UtcTimestamp
    # null when the book allows unlimited redemptions
    redemptionsLeft: int | None


class Health(Out):
    status: str
    checks: dict[str, str] | None = None
