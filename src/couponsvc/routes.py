"""HTTP handlers and the route table (which also drives the OpenAPI document)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from couponsvc import errors, schemas
from couponsvc.auth import Principal
from couponsvc.codes import code_lines, is_valid_code
from couponsvc.coupons import Idempotency, Outcome
from couponsvc.http import (
    fingerprint,
    header,
    idempotency_key,
    is_text,
    json_body,
    json_response,
    query,
    query_int,
    read_body,
)
from couponsvc.outbox_stats import refresh_outbox_gauges
from couponsvc.services import Services
from couponsvc.types import Endpoint

T = TypeVar("T")
DEFAULT_PAGE = 50
MAX_PAGE = 500
PageSize = Annotated[int, Meta(ge=1, le=MAX_PAGE)]
REPLAYED_HEADER = "Idempotent-Replayed"
_USER = re.compile(schemas.USER_PATTERN)
_BOOK_ID = re.compile(schemas.BOOK_ID_PATTERN)


def _services(request: Request) -> Services:
    # The lifespan's state, as the server copied it into this request's scope
    # (what `request.state` wraps, without building a State object each time).
    services: Services = request.scope["state"]["services"]
    return services


def _principal(request: Request) -> Principal:
    return _services(request).verifier.verify(header(request, b"authorization"))


def _book_in_query(request: Request, required: str | None = None) -> str | None:
    """?couponBookId=, in lower case as a book id in a body is; None when not
    given, unless `required` (then that is the 400's detail, also for an
    empty value)."""
    book_id = query(request, "couponBookId")
    if required is not None and not book_id:
        raise errors.InvalidRequest(required, field="couponBookId")
    if book_id is None:
        return None
    if not _BOOK_ID.fullmatch(book_id):
        raise errors.InvalidRequest(f"couponBookId {book_id[:64]!r} is not a book id (a UUID)",
                                    field="couponBookId")
    return book_id.lower()


def _path_code(request: Request) -> str:
    code: str = request.path_params["code"]
    if not is_valid_code(code):
        raise errors.InvalidRequest("code must be 1-64 of A-Z a-z 0-9 _ -", field="code")
    return code


def _idempotency(request: Request, principal: Principal,
                 req: schemas.Base) -> Idempotency | None:
    key = idempotency_key(request)
    if key is None:
        return None
    if isinstance(req, schemas.ActsOnCode) and req.couponBookId is not None:
        # The code's book, named, only spares a look-up: a retry that names
        # it, or not, is the same request.
        req = msgspec.structs.replace(req, couponBookId=None)
    return Idempotency(principal.sub, key, fingerprint(request.method, request.url.path, req))


def _replayed(replayed: bool) -> dict[str, str] | None:
    return {REPLAYED_HEADER: "true"} if replayed else None


async def create_book(request: Request) -> Response:
    principal = _principal(request)
    principal.require_admin()
    req = await json_body(request, schemas.CreateBook)
    book, replayed = await _services(request).books.create_once(
        req, _idempotency(request, principal, req))
    return json_response(book, 201, {"Location": f"/coupons/{book.id}",
                                     **(_replayed(replayed) or {})})


async def get_book(request: Request) -> Response:
    _principal(request).require_admin()
    book_id = str(request.path_params["couponBookId"])  # a UUID (route_path), lower case
    return json_response(await _services(request).books.get(book_id))


async def upload_codes(request: Request) -> Response:
    _principal(request).require_admin()
    services = _services(request)
    if is_text(request):
        return await _upload_text(request, services)
    req = await json_body(request, schemas.UploadCodes, services.settings.max_body_bytes)
    if (req.codes is None) == (req.generate is None):
        raise errors.InvalidRequest("send exactly one of codes or generate", field="codes")
    if req.generate is not None:
        result = await services.books.generate(req.couponBookId, req.generate.pattern,
                                               req.generate.count)
    else:
        assert req.codes is not None
        result = await services.books.upload(req.couponBookId, req.codes)
    return json_response(result)


async def _upload_text(request: Request, services: Services) -> Response:
    """A text/plain body: one code per line, the book in ?couponBookId= (what
    `couponsvc upload` sends: no JSON to build or parse for a million codes)."""
    book_id = _book_in_query(
        request, required="a text/plain upload needs ?couponBookId=<book id>")
    assert book_id is not None
    body = await read_body(request, services.settings.max_body_bytes)
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise errors.InvalidRequest("the body must be UTF-8 text", field="codes") from None
    return json_response(await services.books.upload(book_id, code_lines(text)))


async def assign_random(request: Request) -> Response:
    principal = _principal(request)
    req = await json_body(request, schemas.AssignRandom)
    await _count_assign(request, principal, req.userId)
    outcome = await _services(request).coupons.assign_random(
        principal, req.couponBookId, req.userId, _idempotency(request, principal, req))
    return json_response(outcome.coupon, headers=_replayed(outcome.replayed))


async def assign_code(request: Request) -> Response:
    principal = _principal(request)
    code = _path_code(request)
    req = await json_body(request, schemas.AssignCode)
    coupons = _services(request).coupons
    idem = _idempotency(request, principal, req)

    async def assign() -> Outcome:
        await _count_assign(request, principal, req.userId)
        return await coupons.assign_code(principal, code, req.userId, req.couponBookId, idem)

    outcome = await _look_up(request, principal, req.userId, assign)
    return json_response(outcome.coupon, headers=_replayed(outcome.replayed))


async def lock_code(request: Request) -> Response:
    principal = _principal(request)
    code = _path_code(request)
    req = await json_body(request, schemas.Lock)
    coupons = _services(request).coupons
    idem = _idempotency(request, principal, req)
    result, replayed = await _look_up(
        request, principal, req.userId,
        lambda: coupons.lock(principal, code, req.userId, req.ttlSeconds, idem,
                             req.couponBookId))
    return json_response(result, headers=_replayed(replayed))


async def unlock_code(request: Request) -> Response:
    principal = _principal(request)
    code = _path_code(request)
    req = await json_body(request, schemas.Unlock)
    coupons = _services(request).coupons
    # A look-up of a code by name like the others: its 404s count as misses.
    coupon = await _look_up(request, principal, req.userId,
                            lambda: coupons.unlock(principal, code, req.userId, req.lockToken,
                                                   req.couponBookId))
    return json_response(coupon)


async def redeem_code(request: Request) -> Response:
    principal = _principal(request)
    code = _path_code(request)
    req = await json_body(request, schemas.Redeem)
    coupons = _services(request).coupons
    idem = _idempotency(request, principal, req)
    redemption, replayed = await _look_up(
        request, principal, req.userId,
        lambda: coupons.redeem(principal, code, req.userId, req.lockToken, idem,
                               req.couponBookId))
    return json_response(redemption, headers=_replayed(replayed))


# --- abuse limits (ratelimit.py) ----------------------------------------------


def _address(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


async def _count_assign(request: Request, principal: Principal, user_id: str) -> None:
    guard = _services(request).guard
    if guard is not None:
        await guard.assign(principal, user_id, _address(request))


async def _look_up(request: Request, principal: Principal, user_id: str,
                   call: Callable[[], Awaitable[T]]) -> T:
    """Runs a look-up of a code by name; its 404s count towards the miss limit."""
    guard = _services(request).guard
    if guard is None:
        return await call()
    guard.before_lookup(principal, user_id)
    try:
        return await call()
    except errors.NotFound:
        await guard.lookup_missed(principal, user_id, _address(request))
        raise


async def list_user_coupons(request: Request) -> Response:
    principal = _principal(request)
    user_id: str = request.path_params["userId"]
    if not _USER.fullmatch(user_id):
        raise errors.InvalidRequest("userId must be 1-128 of A-Z a-z 0-9 . _ @ + : -",
                                    field="userId")
    book_id = _book_in_query(request)
    limit = query_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    page = await _services(request).coupons.list_for_user(
        principal, user_id, book_id, limit, query(request, "cursor"))
    headers = None
    if page.next_cursor is not None:
        # A path, not a whole URL (RFC 8288 resolves it against the request's):
        # the Host header is the client's to set, not ours to echo back.
        next_url = request.url.include_query_params(cursor=page.next_cursor, limit=limit)
        headers = {"Link": f'<{next_url.path}?{next_url.query}>; rel="next"'}
    return json_response(page.coupons, headers=headers)


async def healthz(_: Request) -> Response:
    return json_response(schemas.Health(status="ok"))


async def readyz(request: Request) -> Response:
    # Ready means the hot path works, i.e. Redis answers. With Postgres down the
    # service keeps serving (events wait in the outbox): "degraded", still 200.
    checks = await _services(request).readiness()
    ready = checks["redis"] == "ok"
    durable = checks["postgres"] in ("ok", "disabled")
    status = "unavailable" if not ready else "ok" if durable else "degraded"
    health = schemas.Health(status=status, checks=checks)
    return json_response(health, 200 if ready else 503,
                         None if ready else {"Retry-After": "1"})


async def metrics(request: Request) -> Response:
    services = _services(request)
    await refresh_outbox_gauges(services.redis, services.store.keys, services.metrics.outbox)
    return Response(generate_latest(services.registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return Response(_services(request).openapi, media_type="application/json")


# --- the route table ---------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    endpoint: Endpoint
    operation_id: str
    summary: str
    tag: str
    request: type[Any] | None = None
    # status -> (description, response type or None)
    responses: dict[int, tuple[str, Any]] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    auth: bool = True
    idempotent: bool = False
    query: tuple[tuple[str, str, type[Any]], ...] = ()
    # Also accepts a text/plain body (one item per line); described in OpenAPI.
    text_body: str | None = None
    # status -> headers that answer sends (openapi.HEADERS describes each);
    # Idempotent-Replayed, WWW-Authenticate and Retry-After follow from the rest.
    headers: dict[int, tuple[str, ...]] = field(default_factory=dict)

    @property
    def route_path(self) -> str:
        """The path as the router matches it: a book id only matches a UUID, so
        /coupons/codes is never read as GET /coupons/{couponBookId} (a wrong
        method there is a 405 that allows POST, not an unknown book)."""
        return self.path.replace("{couponBookId}", "{couponBookId:uuid}")


_WRITE_ERRORS = (400, 401, 403, 404, 409, 413, 415, 503)
# Creating a book names no existing book or code: no 404.
_CREATE_ERRORS = tuple(status for status in _WRITE_ERRORS if status != 404)
# Assigns and code look-ups are also rate limited (ratelimit.py).
_LIMITED_ERRORS = (*_WRITE_ERRORS, 429)

OPERATIONS: tuple[Operation, ...] = (
    Operation("POST", "/coupons", create_book, "createCouponBook", "Create a coupon book",
              "coupons", schemas.CreateBook, {201: ("Coupon book created", schemas.Book)},
              _CREATE_ERRORS, idempotent=True,
              headers={201: ("Location",), 409: ("Retry-After",)}),
    Operation("GET", "/coupons/{couponBookId}", get_book, "getCouponBook",
              "A coupon book with live counts", "coupons", None,
              {200: ("The coupon book", schemas.Book)}, (401, 403, 404, 503)),
    Operation("POST", "/coupons/codes", upload_codes, "uploadCouponCodes",
              "Upload or generate codes for a coupon book", "coupons", schemas.UploadCodes,
              {200: ("Codes added and refused", schemas.UploadResult)}, _WRITE_ERRORS,
              query=(("couponBookId", "The book, for a text/plain body", schemas.BookId),),
              text_body="One code per line; the book in the couponBookId query parameter"),
    Operation("POST", "/coupons/assign", assign_random, "assignRandomCoupon",
              "Assign a random free code of a book to a user", "coupons", schemas.AssignRandom,
              {200: ("The assigned code", schemas.Coupon)}, _LIMITED_ERRORS, idempotent=True),
    Operation("POST", "/coupons/assign/{code}", assign_code, "assignSpecificCoupon",
              "Assign a named code to a user", "coupons", schemas.AssignCode,
              {200: ("The assigned code", schemas.Coupon)}, _LIMITED_ERRORS, idempotent=True),
    Operation("POST", "/coupons/lock/{code}", lock_code, "lockCoupon",
              "Lock a code for a while, for its owner's checkout", "coupons", schemas.Lock,
              {200: ("The lock", schemas.LockResult)}, (*_LIMITED_ERRORS, 423),
              idempotent=True),
    Operation("POST", "/coupons/unlock/{code}", unlock_code, "unlockCoupon",
              "Release a lock", "coupons", schemas.Unlock,
              {200: ("The code, unlocked", schemas.Coupon)}, (*_LIMITED_ERRORS, 423)),
    Operation("POST", "/coupons/redeem/{code}", redeem_code, "redeemCoupon",
              "Redeem a code", "coupons", schemas.Redeem,
              {200: ("The redemption", schemas.Redemption)}, (*_LIMITED_ERRORS, 423),
              idempotent=True),
    Operation("GET", "/users/{userId}/coupons", list_user_coupons, "getUserCoupons",
              "The codes assigned to a user, a page at a time", "users", None,
              {200: ("The user's codes; the next page is in the Link header",
                     list[schemas.Coupon])},
              (400, 401, 403, 404, 503),
              query=(("couponBookId", "Only codes of this book", schemas.BookId),
                     ("limit", f"Page size, 1-{MAX_PAGE} (default {DEFAULT_PAGE})", PageSize),
                     ("cursor", "Where the previous page ended (from its Link header)", str)),
              headers={200: ("Link",)}),
    Operation("GET", "/healthz", healthz, "health", "Liveness: the process answers",
              "operations", None, {200: ("Alive", schemas.Health)}, auth=False),
    Operation("GET", "/readyz", readyz, "ready", "Readiness: the stores answer", "operations",
              None, {200: ("Ready", schemas.Health), 503: ("Not ready", schemas.Health)},
              auth=False),
)

