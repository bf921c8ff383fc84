"""Redis outages: fast 503s with Retry-After instead of hangs, and recovery on its own.

Each test has its own redis-server and API process, since it breaks that Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from couponsvc.outbox_stats import READING_REUSE_SECONDS

from .api_client import Api, http_client
from .names import new_code, new_user
from .problems import assert_problem, assert_unavailable
from .servers import Stack

pytestmark = pytest.mark.integration

# A request that takes longer than this counts as hanging: the client gives up.
HANG_SECONDS = 5.0
RECOVERY_SECONDS = 10.0


@pytest.fixture
async def down_api(own_stack: Stack) -> AsyncIterator[Api]:
    async with http_client(own_stack.api.base_url, timeout=HANG_SECONDS) as client:
        yield Api(client, own_stack.api)


async def assert_not_ready(api: Api) -> None:
    response = await api.client.get("/readyz")
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"].startswith("unavailable")


async def wait_until_ready(api: Api) -> None:
    deadline = time.monotonic() + RECOVERY_SECONDS
    while (await api.client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, "the API did not become ready again"
        await asyncio.sleep(0.1)


async def every_kind_of_request(api: Api, book_id: str, code: str, user: str) -> None:
    """One call of each route that needs Redis, all answered 503."""
    assert_unavailable(await api.assign(book_id, new_user()))
    assert_unavailable(await api.assign_code(new_code(), user))
    assert_unavailable(await api.lock(code, user))
    assert_unavailable(await api.unlock(code, user, "some-lock-token"))
    assert_unavailable(await api.redeem(code, user))
    assert_unavailable(await api.get(f"/users/{user}/coupons"))
    assert_unavailable(await api.get(f"/coupons/{book_id}"))
    assert_unavailable(await api.post("/coupons", {"name": "during outage"},
                                      token=api.server.admin))
    assert_unavailable(await api.post("/coupons/codes",
                                      {"couponBookId": book_id, "codes": [new_code()]},
                                      token=api.server.admin))
    assert_unavailable(await api.post("/coupons/codes",
                                      {"couponBookId": book_id,
                                       "generate": {"pattern": "OUT-########", "count": 2}},
                                      token=api.server.admin))


async def test_a_crashed_redis_answers_503_and_the_api_recovers(
        down_api: Api, own_stack: Stack) -> None:
    api = down_api
    book, code, user = await api.owned_code()

    own_stack.redis.kill()

    await every_kind_of_request(api, book["id"], code, user)
    await assert_not_ready(api)
    assert (await api.client.get("/healthz")).status_code == 200

    own_stack.redis.start()  # same port, empty: it had no persistence
    await wait_until_ready(api)

    fresh, codes = await api.book_with_codes(2)
    assigned = await api.assign(fresh["id"], new_user())
    assert assigned.status_code == 200, assigned.text
    assert assigned.json()["code"] in codes
    assert own_stack.api.process is not None and own_stack.api.process.poll() is None


async def test_a_hung_redis_answers_503_instead_of_hanging(
        down_api: Api, own_stack: Stack) -> None:
    api = down_api
    book, code, user = await api.owned_code()

    own_stack.redis.pause()
    try:
        assert_unavailable(await api.assign(book["id"], new_user()))
        await assert_not_ready(api)
    finally:
        own_stack.redis.resume()

    await wait_until_ready(api)
    assert (await api.lock(code, user)).status_code == 200


async def test_books_made_after_redis_restarts_empty_keep_their_own_id(
        down_api: Api, own_stack: Stack) -> None:
    api = down_api
    await api.owned_code()  # book number 1 before the restart, looked up through its code
    own_stack.redis.kill()
    own_stack.redis.start()
    await wait_until_ready(api)
    book, [code] = await api.book_with_codes(1)  # number 1 again in the empty Redis

    response = await api.post(f"/coupons/assign/{code}",
                              {"userId": new_user(), "couponBookId": book["id"]})

    assert response.status_code == 200, response.text
    assert response.json()["couponBookId"] == book["id"]


async def test_a_book_lost_with_redis_is_404_not_the_book_that_took_its_number(
        down_api: Api, own_stack: Stack) -> None:
    """The API still caches the lost book's number; reading it must not show
    the new book that Redis gave the same number."""
    api = down_api
    lost = await api.create_book(name="lost")  # number 1; the API caches id -> 1
    own_stack.redis.kill()
    own_stack.redis.start()
    await wait_until_ready(api)
    fresh = await api.create_book(name="fresh")  # number 1 again in the empty Redis

    response = await api.get(f"/coupons/{lost['id']}")

    assert_problem(response, 404, "book-not-found")
    assert fresh["id"] not in response.text
    assert (await api.get(f"/coupons/{fresh['id']}")).json()["name"] == "fresh"


async def test_a_bulk_load_outlasts_a_stall_the_checkout_path_gives_up_on(
        own_stack: Stack) -> None:
    """Bulk loads have a connection of their own that waits up to 30 s for
    Redis (checkout commands: 2 s). A 3 s stall fails a checkout fast and lets
    the upload finish."""
    async with http_client(own_stack.api.base_url, timeout=30.0) as client:
        api = Api(client, own_stack.api)
        book, _ = await api.book_with_codes(1)  # the book's number is now cached
        codes = [new_code() for _ in range(20_000)]
        upload = asyncio.create_task(api.post(
            "/coupons/codes", {"couponBookId": book["id"], "codes": codes},
            token=api.server.admin))
        await asyncio.sleep(0.05)
        own_stack.redis.pause()
        try:
            started = time.monotonic()
            assert_unavailable(await api.assign(book["id"], new_user()))
            assert time.monotonic() - started < HANG_SECONDS
            await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
        finally:
            own_stack.redis.resume()
        response = await upload
    assert response.status_code == 200, response.text
    assert response.json()["added"] == len(codes)


def metric_samples(text: str) -> dict[str, float]:
    """The unlabelled samples and the 503 count of a scrape, by name."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.labels:
                samples[sample.name] = sample.value
            elif sample.name == "couponsvc_http_requests_total" \
                    and sample.labels["status"] == "503":
                samples["503s"] = samples.get("503s", 0.0) + sample.value
    return samples


@pytest.mark.parametrize("outage", ["paused", "killed"])
async def test_metrics_answer_without_the_outbox_gauges_while_redis_is_down(
        down_api: Api, own_stack: Stack, outage: str) -> None:
    api = down_api
    book, _ = await api.book_with_codes(1)
    healthy = metric_samples((await api.client.get("/metrics")).text)
    assert "couponsvc_outbox_lag_events" in healthy

    if outage == "paused":
        own_stack.redis.pause()
    else:
        own_stack.redis.kill()
    # A reading serves the scrapes of the next 100 ms: the outage shows after it.
    await asyncio.sleep(READING_REUSE_SECONDS)
    try:
        assert_unavailable(await api.assign(book["id"], new_user()))
        response = await api.client.get("/metrics")
    finally:
        if outage == "paused":
            own_stack.redis.resume()
        else:
            own_stack.redis.start()

    assert response.status_code == 200, response.text
    during = metric_samples(response.text)
    assert during["couponsvc_outbox_gauges_up"] == 0
    assert "couponsvc_outbox_lag_events" not in during
    assert "couponsvc_outbox_oldest_unacked_seconds" not in during
    assert during["503s"] >= 1  # the outage itself is still counted

    await wait_until_ready(api)
    after = metric_samples((await api.client.get("/metrics")).text)
    assert after["couponsvc_outbox_gauges_up"] == 1
    assert "couponsvc_outbox_lag_events" in after
