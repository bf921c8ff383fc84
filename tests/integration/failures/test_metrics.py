"""GET /metrics: request counts and latencies by route template and status,
and how far the writer is behind (outbox lag, pending, oldest age)."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from ..api_client import Api
from ..names import new_code, new_user
from .harness import Durable, stream_of, unacknowledged, wait_for

pytestmark = pytest.mark.integration

CATCH_UP_SECONDS = 20.0


async def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_requests_are_counted_by_route_template_and_status(api: Api) -> None:
    book, codes = await api.book_with_codes(3)
    before = await scrape(api)
    user = new_user()
    assert (await api.assign(book["id"], user)).status_code == 200
    assert (await api.assign(book["id"], user)).status_code == 200
    assert (await api.lock(new_code(), user)).status_code == 404

    after = await scrape(api)

    assign = {"method": "POST", "route": "/coupons/assign"}
    assert value(after, "couponsvc_http_requests_total", status="200", **assign) \
        - value(before, "couponsvc_http_requests_total", status="200", **assign) == 2
    lock = {"method": "POST", "route": "/coupons/lock/{code}"}
    assert value(after, "couponsvc_http_requests_total", status="404", **lock) \
        - value(before, "couponsvc_http_requests_total", status="404", **lock) == 1
    assert value(after, "couponsvc_http_request_seconds_count", **assign) \
        - value(before, "couponsvc_http_request_seconds_count", **assign) == 2
    # Raw paths (with codes in them) never become label values.
    routes = {dict(labels).get("route") for _, labels in after}
    assert not [r for r in routes if r and re.search(r"/coupons/lock/[^{]", r)]


async def test_outbox_lag_is_visible_until_the_writer_catches_up(
        stack: Durable, api: Api, redis: Redis) -> None:
    book, codes = await api.book_with_codes(5)
    for code in codes:
        assert (await api.assign_code(code, new_user())).status_code == 200
    stream = await stream_of(redis, book["id"])

    waiting = await scrape(api)

    assert value(waiting, "couponsvc_outbox_gauges_up") == 1
    assert value(waiting, "couponsvc_outbox_lag_events") >= 5 + 2  # + book_created, codes_added
    assert value(waiting, "couponsvc_outbox_pending_events") == 0
    assert value(waiting, "couponsvc_outbox_oldest_unacked_seconds") > 0

    stack.start_writer()

    async def caught_up() -> bool:
        return await unacknowledged(redis, stream) == 0
    await wait_for(caught_up, CATCH_UP_SECONDS, "the writer to catch up")
    drained = await scrape(api)
    assert value(drained, "couponsvc_outbox_lag_events") == 0
    assert value(drained, "couponsvc_outbox_pending_events") == 0
    assert value(drained, "couponsvc_outbox_oldest_unacked_seconds") == 0
