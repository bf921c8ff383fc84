"""Abuse limits: assigns, and failed code look-ups (guessing), per caller and address.

Counting is the `limits` library's sliding-window counter in Redis (one
script call per hit, cluster-safe: each counter's two keys share a hash tag).
A hit runs the library's own script under the library's own key names, but
through the hot path's pipelined client (scripts.py, coalesce.py): called by
the library, each hit was a redis-py round trip of its own, and with the
limits on the API served about half the assigns per second. The library
still reads a refused caller's window (`get_window_stats`), which is rare.
What is counted, and for whom:

- every assign (random or by code), and every 404 of a code look-up
  (assign by code, lock, unlock, redeem);
- per *caller*: an end user's token is the caller; a back-end token
  (coupons:write or coupons:admin) serves many users, so there the caller is
  the pair (token subject, userId acted for);
- per *client address*, for end-user tokens only: a back-end sends every
  user's traffic from a few addresses, an end user's device does not.

A caller over a limit gets 429 with Retry-After. Successful look-ups are never
counted, so a normal checkout (assign, lock, redeem its own code) is not
throttled by the look-up limit. To keep that path free of extra round trips,
look-ups are not checked in Redis before they run: a miss that goes over a
limit (the caller's or its address's) marks the caller blocked in this process
until the window frees up, and later look-ups of a blocked caller are refused
without touching Redis. An address over its limit blocks each caller behind
it at that caller's next miss, not every caller behind it: users sharing an
address (a NAT, a proxy) with a guesser keep their own look-ups.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisClusterStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis.asyncio import Redis

from couponsvc import errors
from couponsvc.auth import Principal
from couponsvc.keys import Keys
from couponsvc.scripts import LIMITS_SLIDING_WINDOW_HIT, Scripts
from couponsvc.settings import Settings

# How many blocked callers one process remembers; the oldest are forgotten first
# (a forgotten one is only checked in Redis again on its next miss).
MAX_REMEMBERED_BLOCKS = 100_000


@dataclass(frozen=True, slots=True)
class Limits:
    """The configured limits, parsed ("30/minute;500/hour" notation)."""

    assigns_per_caller: list[RateLimitItem]
    assigns_per_address: list[RateLimitItem]
    misses_per_caller: list[RateLimitItem]
    misses_per_address: list[RateLimitItem]

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            assigns_per_caller=parse_many(settings.rate_limit_assign),
            assigns_per_address=parse_many(settings.rate_limit_assign_address),
            misses_per_caller=parse_many(settings.rate_limit_misses),
            misses_per_address=parse_many(settings.rate_limit_misses_address),
        )


def storage_uri(settings: Settings) -> str:
    """limits' URI for the service's own Redis (async+redis://, +unix, +cluster)."""
    url = settings.redis_url
    if url.startswith("unix://"):
        return "async+redis+unix://" + url.removeprefix("unix://")
    if settings.redis_cluster:
        return "async+redis+cluster://" + url.split("://", 1)[1].split("/", 1)[0]
    return "async+" + url


class AbuseGuard:
    """Answers 429 (errors.TooManyRequests) to callers over a limit."""

    def __init__(self, settings: Settings, redis: Redis, scripts: Scripts) -> None:
        self.limits = Limits.from_settings(settings)
        self._scripts = scripts
        prefix = Keys(settings.key_prefix).rate_limits
        # One node: share the service's connection pool (and its timeouts). A
        # cluster: limits builds its own redis-py cluster client.
        self._own_client = settings.redis_cluster
        options: dict[str, Any] = {
            "socket_timeout": settings.redis_timeout_seconds,
            "socket_connect_timeout": settings.redis_timeout_seconds,
        } if self._own_client else {"connection_pool": redis.connection_pool}
        storage_class = RedisClusterStorage if self._own_client else RedisStorage
        self._storage: RedisStorage = storage_class(
            storage_uri(settings), implementation="redispy", key_prefix=prefix, **options)
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)
        self._blocked_until: dict[tuple[str, ...], float] = {}

    async def aclose(self) -> None:
        if self._own_client:
            # limits has no close(); its bridge holds the redis-py cluster client.
            client: Any = getattr(self._storage.bridge, "storage")  # noqa: B009
            await client.aclose()

    # --- what the handlers call ----------------------------------------------

    async def assign(self, principal: Principal, user_id: str, address: str | None) -> None:
        """Counts an assign; 429 when the caller or its address is over the limit."""
        for limit, who in self._subjects("assign", principal, user_id, address):
            if not await self._hit(limit, who):
                await self._refuse(limit, who, "too many assign requests")

    def before_lookup(self, principal: Principal, user_id: str) -> None:
        """429 for a caller that this process saw miss over a limit (its own,
        or its address's)."""
        until = self._blocked_until.get(self._caller("miss", principal, user_id))
        now = time.time()
        if until is not None and until > now:
            raise errors.TooManyRequests("too many look-ups of unknown codes",
                                         retry_after=math.ceil(until - now))

    async def lookup_missed(self, principal: Principal, user_id: str,
                            address: str | None) -> None:
        """Counts a 404; 429 (instead of the 404) once the caller or its
        address is over the limit. Either way it is the caller that is then
        blocked, not the address: the users behind one address (a NAT, a
        proxy) who do not guess keep their look-ups."""
        for limit, who in self._subjects("miss", principal, user_id, address):
            if not await self._hit(limit, who):
                until = await self._refuse_at(limit, who)
                if len(self._blocked_until) >= MAX_REMEMBERED_BLOCKS:
                    self._blocked_until.pop(next(iter(self._blocked_until)))
                self._blocked_until[self._caller("miss", principal, user_id)] = until
                raise errors.TooManyRequests("too many look-ups of unknown codes",
                                             retry_after=math.ceil(until - time.time()))

    # --- helpers ---------------------------------------------------------------

    async def _hit(self, limit: RateLimitItem, who: tuple[str, ...]) -> bool:
        """What `SlidingWindowCounterRateLimiter.hit` does (the same script on
        the same keys: `window_keys`), sent through the pipelined client."""
        previous, current = window_keys(self._storage, limit.key_for(*who))
        reply = await self._scripts.run(LIMITS_SLIDING_WINDOW_HIT, [previous, current],
                                        [limit.amount, limit.get_expiry(), 1])
        return bool(reply)  # Lua true is 1, false is nil

    def _subjects(self, what: str, principal: Principal, user_id: str,
                  address: str | None) -> list[tuple[RateLimitItem, tuple[str, ...]]]:
        per_caller = self.limits.assigns_per_caller if what == "assign" \
            else self.limits.misses_per_caller
        per_address = self.limits.assigns_per_address if what == "assign" \
            else self.limits.misses_per_address
        caller = self._caller(what, principal, user_id)
        subjects = [(limit, caller) for limit in per_caller]
        if address is not None and not principal.acts_for_anyone:
            subjects += [(limit, (what, "address", address)) for limit in per_address]
        return subjects

    @staticmethod
    def _caller(what: str, principal: Principal, user_id: str) -> tuple[str, ...]:
        if principal.acts_for_anyone:
            return (what, "caller", principal.sub, user_id)
        return (what, "caller", principal.sub)

    async def _refuse_at(self, limit: RateLimitItem, who: tuple[str, ...]) -> float:
        """When the caller may try again: the window's reset, at least a second away."""
        stats = await self._limiter.get_window_stats(limit, *who)
        return max(stats.reset_time, time.time() + 1)

    async def _refuse(self, limit: RateLimitItem, who: tuple[str, ...], detail: str) -> None:
        until = await self._refuse_at(limit, who)
        raise errors.TooManyRequests(detail, retry_after=math.ceil(until - time.time()))


def window_keys(storage: RedisStorage, key: str) -> tuple[str, str]:
    """The previous and the current window's Redis keys of a sliding-window
    counter, named as `limits` names them (tests/unit/test_ratelimit.py
    holds the library to it: it reads these keys when it refuses a caller)."""
    current = storage.bridge.prefixed_key(f"{{{key}}}")
    return f"{current}/-1", current
