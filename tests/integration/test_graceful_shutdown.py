"""SIGTERM to the API while requests are in flight: they finish, new
connections are refused, the process exits cleanly.

(A Redis restart under load is tests/integration/failures/test_redis_killed.py:
fast 503s with Retry-After during the outage, full service after it, with the
client reconnecting by itself; test_redis_down.py does the same without load.)

To have requests reliably in flight at the moment of the signal, the test
holds them inside the API: it pauses Redis (SIGSTOP), sends the requests,
signals the API, and lets Redis go on well within the API's 2 s Redis timeout.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import pytest
from redis.asyncio import Redis

from .api_client import Api, http_client
from .names import new_user
from .redis_state import book_keys
from .servers import Stack

pytestmark = pytest.mark.integration

IN_FLIGHT = 40
EXIT_SECONDS = 15.0


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


async def test_sigterm_lets_in_flight_requests_finish_and_refuses_new_ones(
        own_stack: Stack) -> None:
    server = own_stack.api
    assert server.process is not None
    async with http_client(server.base_url) as client:
        api = Api(client, server)
        book, codes = await api.book_with_codes(IN_FLIGHT + 10)
        users = [new_user() for _ in range(IN_FLIGHT)]
        redis = Redis.from_url(own_stack.redis.url, decode_responses=True)
        keys = await book_keys(redis, book["id"])
        events_before = await redis.xlen(f"{keys}:events")

        own_stack.redis.pause()
        try:
            in_flight = [asyncio.create_task(api.assign(book["id"], user)) for user in users]
            await asyncio.sleep(0.3)  # every request is inside the API, waiting on Redis
            assert not any(task.done() for task in in_flight)
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            assert refuses_connections(server.port)
            assert not any(task.done() for task in in_flight)
        finally:
            own_stack.redis.resume()

        answers = await asyncio.gather(*in_flight)

    assert [response.status_code for response in answers] == [200] * IN_FLIGHT, \
        [response.text for response in answers if response.status_code != 200]
    assigned = {response.json()["code"] for response in answers}
    assert len(assigned) == IN_FLIGHT and assigned <= set(codes)
    assert all(response.headers.get("connection") == "close" for response in answers)

    started = time.monotonic()
    while server.process.poll() is None:
        assert time.monotonic() - started < EXIT_SECONDS, "the API did not exit"
        await asyncio.sleep(0.05)
    # uvicorn finishes its shutdown, then re-raises the signal it handled, so
    # the exit status says why the process stopped (143 to a shell).
    assert server.process.returncode == -signal.SIGTERM
    log = server.log()
    assert "Finished server process" in log and "unhandled error" not in log

    # What the API acknowledged is what Redis holds.
    try:
        assert await redis.hlen(f"{keys}:assigned") == IN_FLIGHT
        assert await redis.scard(f"{keys}:free") == 10
        assert await redis.xlen(f"{keys}:events") == events_before + IN_FLIGHT
    finally:
        await redis.aclose()
