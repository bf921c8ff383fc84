"""The abuse limits' counting (ratelimit.py): hits run the `limits` library's
script through the service's own pipe, on the keys the library itself reads
when it refuses a caller. The HTTP behaviour is in
tests/integration/test_rate_limits.py."""

from __future__ import annotations

import dataclasses
import time

import fakeredis
import pytest
from limits import parse
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from couponsvc import errors
from couponsvc.auth import Principal
from couponsvc.ratelimit import AbuseGuard
from couponsvc.scripts import Scripts
from couponsvc.settings import Settings

ASSIGNS = 3


@pytest.fixture
def guard(settings: Settings, redis: fakeredis.FakeAsyncRedis, scripts: Scripts) -> AbuseGuard:
    limited = dataclasses.replace(settings, rate_limit_assign=f"{ASSIGNS}/minute",
                                  rate_limit_assign_address="100/minute")
    return AbuseGuard(limited, redis, scripts)


async def test_assigns_past_the_limit_are_refused_until_the_window_frees(
        guard: AbuseGuard, alice: Principal) -> None:
    started = time.time()
    for _ in range(ASSIGNS):
        await guard.assign(alice, "alice", "10.0.0.1")
    with pytest.raises(errors.TooManyRequests) as refused:
        await guard.assign(alice, "alice", "10.0.0.1")
    # The library reads the window our hits filled: the minute the first opened.
    assert 60 - (time.time() - started) - 1 <= refused.value.retry_after <= 60


async def test_the_library_sees_every_hit_under_its_own_key_names(
        guard: AbuseGuard, redis: fakeredis.FakeAsyncRedis, writer: Principal) -> None:
    for _ in range(2):
        await guard.assign(writer, "bob", None)
    limiter = SlidingWindowCounterRateLimiter(guard._storage)
    limit = parse(f"{ASSIGNS}/minute")
    stats = await limiter.get_window_stats(limit, "assign", "caller", "checkout", "bob")
    assert stats.remaining == ASSIGNS - 2
    # Only the current window's key exists yet, under the service's prefix.
    assert await redis.keys("cb:ratelimit:*") == \
        [f"cb:ratelimit:{{{limit.key_for('assign', 'caller', 'checkout', 'bob')}}}"]


async def test_a_refused_subject_does_not_use_up_the_next(
        guard: AbuseGuard, alice: Principal) -> None:
    """Each caller and address has its own counter: another user at another
    address is served while alice is refused."""
    for _ in range(ASSIGNS):
        await guard.assign(alice, "alice", "10.0.0.1")
    with pytest.raises(errors.TooManyRequests):
        await guard.assign(alice, "alice", "10.0.0.1")
    await guard.assign(Principal("carol", frozenset()), "carol", "10.0.0.2")
