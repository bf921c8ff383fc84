"""Assertions on the API's error answers: an RFC 9457 problem with the right
status and type, the 503 an outage must give, and no internals leaking into a
body."""

from __future__ import annotations

from typing import Any

import httpx

PROBLEM_MEDIA_TYPE = "application/problem+json"
# Words that would betray a stack trace or internals leaking into a body.
LEAK_MARKERS = ("Traceback", 'File "', "site-packages", "couponsvc/", ".py\", line")


def assert_no_leak(response: httpx.Response) -> None:
    for marker in LEAK_MARKERS:
        assert marker not in response.text, f"{marker!r} in the body: {response.text}"


def assert_unavailable(response: httpx.Response) -> None:
    """A fast 503 that tells the client when to retry: how an outage must answer."""
    assert_problem(response, 503, "service-unavailable")
    assert int(response.headers["retry-after"]) >= 1


def assert_problem(response: httpx.Response, status: int,
                   slug: str | None = None) -> dict[str, Any]:
    """An RFC 9457 problem with this status (and type, when given); returns its body."""
    assert response.status_code == status, response.text
    media = response.headers["content-type"].split(";")[0].strip()
    assert media == PROBLEM_MEDIA_TYPE, response.headers["content-type"]
    body: dict[str, Any] = response.json()
    for name in ("type", "title", "status", "detail"):
        assert name in body, f"{name} missing from {body}"
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if slug is not None:
        assert body["type"].rsplit("/", 1)[-1] == slug, body
    assert_no_leak(response)
    return body
