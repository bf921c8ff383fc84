"""What the state-machine test drives: the service reached one of two ways
(model_service_driver.py: the service layer; model_http_driver.py: HTTP),
behind one interface.

Both answer a `Result`: the status, the problem type's slug on a refusal,
the JSON-shaped body, and whether the reply was an idempotent replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .model_types import VIEW_FIELDS, Caller

Json = dict[str, Any]


@dataclass(frozen=True)
class Result:
    status: int
    problem: str | None  # the problem type's last segment; None on success
    body: Any
    replayed: bool = False


@dataclass(frozen=True)
class Page:
    result: Result
    next_cursor: str | None


class Driver(Protocol):
    prefix: str  # the Redis key prefix the service uses

    def close(self) -> None: ...
    def create_book(self, fields: Json) -> Json: ...
    def book(self, book: str) -> Json: ...
    def upload(self, book: str, codes: list[str]) -> Result: ...
    def generate(self, book: str, pattern: str, count: int) -> Result: ...
    def assign_random(self, caller: Caller, book: str, user: str, key: str | None) -> Result: ...
    def assign_code(self, caller: Caller, code: str, user: str, book: str | None,
                    key: str | None) -> Result: ...
    def lock(self, caller: Caller, code: str, user: str, ttl: int | None) -> Result: ...
    def unlock(self, caller: Caller, code: str, user: str, token: str) -> Result: ...
    def redeem(self, caller: Caller, code: str, user: str, token: str | None,
               key: str | None) -> Result: ...
    def list_page(self, caller: Caller, user: str, book: str | None, limit: int,
                  cursor: str | None) -> Page: ...


# The requests that carry an Idempotency-Key, as HTTP sends them: one shape
# per operation, so equal requests have equal bodies.

def assign_random_request(book: str, user: str) -> tuple[str, Json]:
    return "/coupons/assign", {"userId": user, "couponBookId": book}


def assign_code_request(code: str, user: str, book: str | None) -> tuple[str, Json]:
    body = {"userId": user} if book is None else {"userId": user, "couponBookId": book}
    return f"/coupons/assign/{code}", body


def redeem_request(code: str, user: str, token: str | None) -> tuple[str, Json]:
    body = {"userId": user} if token is None else {"userId": user, "lockToken": token}
    return f"/coupons/redeem/{code}", body


def every_page(driver: Driver, caller: Caller, user: str, book: str | None, limit: int,
               max_pages: int) -> Result:
    """Follows the cursors; answers the first refusal, or all the pages' coupons
    (their VIEW_FIELDS) as {"coupons": [...]}."""
    listed: list[Json] = []
    cursor: str | None = None
    for _ in range(max_pages):
        page = driver.list_page(caller, user, book, limit, cursor)
        if page.result.problem is not None:
            return page.result
        assert len(page.result.body) <= limit
        listed += page.result.body
        if page.next_cursor is None:
            return Result(200, None, {"coupons": [
                {name: coupon.get(name) for name in VIEW_FIELDS} for coupon in listed]})
        assert len(page.result.body) == limit, "a page with a next page is full"
        cursor = page.next_cursor
    raise AssertionError(f"more than {max_pages} pages")
