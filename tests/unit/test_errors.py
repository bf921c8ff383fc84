"""Domain errors as RFC 9457 problem responses (couponsvc.errors)."""

from __future__ import annotations

import inspect
import json

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.exceptions import HTTPException

from couponsvc import errors

pytestmark = pytest.mark.unit

SIMPLE = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
          if issubclass(cls, errors.ServiceError)
          and cls not in (errors.ServiceError, errors.CodeLocked, errors.TooManyRequests,
                          errors.IdempotencyKeyInProgress)]


def body(response) -> dict:
    return json.loads(response.body)


@pytest.mark.parametrize("cls", SIMPLE, ids=lambda cls: cls.__name__)
def test_each_error_is_a_problem_document(cls):
    response = errors.problem_response(cls("what went wrong"))

    assert response.status_code == cls.status
    assert response.media_type == errors.PROBLEM_MEDIA_TYPE
    assert response.headers["content-type"].startswith(errors.PROBLEM_MEDIA_TYPE)
    assert body(response) == {"type": f"/problems/{cls.slug}", "title": cls.title,
                              "status": cls.status, "detail": "what went wrong"}


def test_slugs_are_unique():
    slugs = [cls.slug for cls in SIMPLE] + [errors.CodeLocked.slug, errors.TooManyRequests.slug,
                                            errors.IdempotencyKeyInProgress.slug]
    assert len(slugs) == len(set(slugs))


def test_too_many_requests_says_when_to_retry():
    response = errors.problem_response(errors.TooManyRequests("slow down", retry_after=7))

    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert body(response) == {"type": "/problems/too-many-requests",
                              "title": errors.TooManyRequests.title, "status": 429,
                              "detail": "slow down", "retryAfterSeconds": 7}


def test_a_key_in_progress_says_when_to_retry():
    error = errors.IdempotencyKeyInProgress("still making its book", retry_after=1)
    response = errors.problem_response(error)

    assert response.status_code == 409
    assert response.headers["retry-after"] == "1"
    assert body(response) == {
        "type": "/problems/idempotency-key-in-progress",
        "title": errors.IdempotencyKeyInProgress.title, "status": 409,
        "detail": "still making its book", "retryAfterSeconds": 1}


def test_invalid_request_names_the_field():
    response = errors.problem_response(errors.InvalidRequest("too long", field="name"))

    assert body(response)["field"] == "name"


def test_code_locked_says_until_when_and_when_to_retry():
    error = errors.CodeLocked("C1 is locked", locked_until="2030-01-01T00:00:00.000Z",
                              retry_after=7)
    response = errors.problem_response(error)

    assert response.status_code == 423
    assert response.headers["retry-after"] == "7"
    assert body(response)["lockedUntil"] == "2030-01-01T00:00:00.000Z"
    assert body(response)["retryAfterSeconds"] == 7


@pytest.mark.parametrize("cls, header", [(errors.Unauthorized, "www-authenticate"),
                                          (errors.ServiceUnavailable, "retry-after")])
def test_headers(cls, header):
    assert header in errors.problem_response(cls("x")).headers


async def test_handlers_map_framework_and_storage_errors(caplog):
    handlers = errors.exception_handlers()

    not_found = await handlers[HTTPException](None, HTTPException(404, "nothing here"))
    down = await handlers[RedisConnectionError](None, RedisConnectionError("refused"))
    bug = await handlers[Exception](None, KeyError("secret-internal-detail"))

    assert (not_found.status_code, body(not_found)["type"]) == (404, "/problems/not-found")
    assert (down.status_code, down.headers["retry-after"]) == (503, "1")
    assert bug.status_code == 500
    assert "secret-internal-detail" not in bug.body.decode()
    assert bug.media_type == errors.PROBLEM_MEDIA_TYPE
