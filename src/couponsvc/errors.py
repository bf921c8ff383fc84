"""Domain errors and their one mapping to RFC 9457 problem responses.

The service layer raises these; `exception_handlers()` turns every one of them
(and Starlette's own HTTP errors, Redis outages and bugs) into
`application/problem+json`. Routes never catch them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import asyncpg
import msgspec
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from couponsvc.types import ExceptionHandler

log = logging.getLogger("couponsvc")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "/problems/"
RETRY_AFTER_UNAVAILABLE_SECONDS = 1


class Problem(msgspec.Struct, omit_defaults=True):
    """An RFC 9457 problem document, plus this service's extension members."""

    type: str
    title: str
    status: int
    detail: str
    field: str | None = None
    lockedUntil: str | None = None
    retryAfterSeconds: int | None = None


_encode = msgspec.json.Encoder().encode


def encode_problem(problem: Problem) -> bytes:
    return _encode(problem)


class ServiceError(Exception):
    """Base of every error a client can cause or see."""

    status: ClassVar[int] = 400
    slug: ClassVar[str] = "invalid-request"
    title: ClassVar[str] = "Invalid request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def headers(self) -> dict[str, str]:
        return {}

    def problem(self) -> Problem:
        return Problem(type=PROBLEM_BASE + self.slug, title=self.title, status=self.status,
                       detail=self.detail, **self.extra)


class InvalidRequest(ServiceError):
    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail, field=field)


class Unauthorized(ServiceError):
    status, slug, title = 401, "unauthorized", "Missing or invalid bearer token"

    def __init__(self, detail: str, credentials_sent: bool = True) -> None:
        super().__init__(detail)
        self.credentials_sent = credentials_sent

    def headers(self) -> dict[str, str]:
        # RFC 6750 section 3.1: no error code when the request had no credentials.
        if not self.credentials_sent:
            return {"WWW-Authenticate": "Bearer"}
        return {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class Forbidden(ServiceError):
    status, slug, title = 403, "forbidden", "Not allowed for this token"


class NotFound(ServiceError):
    status, slug, title = 404, "not-found", "Not found"


class BookNotFound(NotFound):
    slug, title = "book-not-found", "Coupon book not found"


class CodeNotFound(NotFound):
    slug, title = "code-not-found", "Coupon code not found"


class MethodNotAllowed(ServiceError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(ServiceError):
    status, slug, title = 409, "conflict", "Conflict with the current state"


class BookExhausted(Conflict):
    slug, title = "book-exhausted", "No free codes left in this book"


class UserLimitReached(Conflict):
    slug, title = "user-limit-reached", "The user already has the most codes this book allows"


class CodeAlreadyAssigned(Conflict):
    slug, title = "code-already-assigned", "The code is assigned to another user"


class CodeNotAssigned(Conflict):
    slug, title = "code-not-assigned", "The code is not assigned to this user"


class BookNotActive(Conflict):
    slug, title = "book-not-active", "The book is outside its validity window"


class NotLocked(Conflict):
    slug, title = "not-locked", "The code is not locked"


class BookMismatch(Conflict):
    slug, title = "book-mismatch", "The code belongs to another book"


class IdempotencyKeyReused(Conflict):
    slug, title = "idempotency-key-reused", "The idempotency key was used for another request"

    def __init__(
            self, detail: str = "this Idempotency-Key was already used with a different request",
    ) -> None:
        super().__init__(detail)


class IdempotencyKeyInProgress(Conflict):
    slug, title = "idempotency-key-in-progress", "A request with this key has not finished"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, retryAfterSeconds=retry_after)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class CodeLocked(ServiceError):
    status, slug, title = 423, "code-locked", "The code is locked"

    def __init__(self, detail: str, locked_until: str, retry_after: int) -> None:
        super().__init__(detail, lockedUntil=locked_until, retryAfterSeconds=retry_after)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class CodeRedeemed(ServiceError):
    status, slug, title = 423, "code-redeemed", "The code has no redemptions left"


class TooManyRequests(ServiceError):
    status, slug, title = 429, "too-many-requests", "Too many requests; slow down"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, retryAfterSeconds=retry_after)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class PayloadTooLarge(ServiceError):
    status, slug, title = 413, "payload-too-large", "Request body too large"


class UnsupportedMediaType(ServiceError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class InternalError(ServiceError):
    status, slug, title = 500, "internal-error", "Internal error"


class ServiceUnavailable(ServiceError):
    status, slug, title = 503, "service-unavailable", "Storage unavailable, retry shortly"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_UNAVAILABLE_SECONDS)}


def problem_response(error: ServiceError) -> Response:
    return Response(_encode(error.problem()), status_code=error.status,
                    headers=error.headers(), media_type=PROBLEM_MEDIA_TYPE)


_HTTP_ERRORS: Mapping[int, type[ServiceError]] = {404: NotFound, 405: MethodNotAllowed}


async def _service_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return problem_response(exc)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    cls = _HTTP_ERRORS.get(exc.status_code, InvalidRequest)
    response = problem_response(cls(exc.detail))
    response.headers.update(exc.headers or {})
    return response


async def _redis_down(_: Request, exc: Exception) -> Response:
    log.warning("redis unavailable: %s", exc)
    return problem_response(ServiceUnavailable("Redis did not answer; retry shortly"))


async def _postgres_down(_: Request, exc: Exception) -> Response:
    log.warning("postgres unavailable: %s", exc)
    return problem_response(ServiceUnavailable("Postgres did not answer; retry shortly"))


async def _postgres_refused(_: Request, exc: Exception) -> Response:
    log.warning("postgres refused a write for now: %s", exc)
    return problem_response(ServiceUnavailable(
        "Postgres cannot take this write right now; retry shortly"))


async def _client_gone(_: Request, exc: Exception) -> Response:
    # The client went away (or missed a deadline, serving.py) while its body was
    # read: nobody is left to answer, and it is not the service's error.
    log.info("client disconnected before its request body arrived")
    return problem_response(InvalidRequest("the client disconnected"))


async def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return problem_response(InternalError("An unexpected error occurred; it has been logged"))


def exception_handlers() -> dict[Any, ExceptionHandler]:
    return {
        ServiceError: _service_error,
        ClientDisconnect: _client_gone,
        HTTPException: _http_error,
        RedisConnectionError: _redis_down,
        RedisTimeoutError: _redis_down,
        # A cluster in the middle of a failover: slots without a primary, moved
        # or answered by a node that just became a replica, for a moment.
        RedisClusterException: _redis_down,
        ClusterDownError: _redis_down,
        TryAgainError: _redis_down,
        AskError: _redis_down,  # MovedError too (a subclass)
        ReadOnlyError: _redis_down,
        asyncpg.PostgresConnectionError: _postgres_down,
        asyncpg.InterfaceError: _postgres_down,
        asyncpg.exceptions.OperatorInterventionError: _postgres_down,
        # Refusals that say "not now" about the database, not the request.
        asyncpg.exceptions.ReadOnlySQLTransactionError: _postgres_refused,
        asyncpg.exceptions.LockNotAvailableError: _postgres_refused,
        asyncpg.exceptions.InsufficientResourcesError: _postgres_refused,
        asyncpg.exceptions.TransactionRollbackError: _postgres_refused,
        asyncpg.exceptions.QueryCanceledError: _postgres_refused,
        ConnectionError: _postgres_down,
        TimeoutError: _postgres_down,
        Exception: _unexpected,
    }
