"""Checkout traffic for the failure tests, and a tally of what the API acknowledged."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from ..api_client import Api
from ..names import new_user

# Locks in the load outlive the test, so no lock_expired event is ever recorded
# and every 2xx assign/lock/redeem is exactly one outbox event.
LOCK_TTL_SECONDS = 3600


@dataclass
class Tally:
    """What the API acknowledged (2xx), as the load saw it."""

    statuses: Counter[str] = field(default_factory=Counter)
    assigned: dict[str, str] = field(default_factory=dict)  # code -> user
    locked: set[str] = field(default_factory=set)
    redeemed: dict[str, int] = field(default_factory=dict)  # code -> timesRedeemed
    flows: int = 0
    failures: int = 0

    def note(self, kind: str, response: httpx.Response) -> bool:
        self.statuses[f"{kind} {response.status_code}"] += 1
        if not response.is_success:
            self.failures += 1
        return response.is_success

    def ok(self, kind: str) -> int:
        """How many `kind` calls were answered 2xx."""
        return sum(n for key, n in self.statuses.items() if key.startswith(f"{kind} 2"))

    @property
    def events(self) -> int:
        """Outbox entries the acknowledged checkout calls wrote: one each."""
        return self.ok("assign") + self.ok("lock") + self.ok("redeem")


async def checkout(api: Api, book_id: str, tally: Tally, *, contend: bool = False) -> None:
    """One checkout: assign a random code, lock it, redeem it with the lock's
    token. With `contend`, a second lock races the first (one gets 423)."""
    tally.flows += 1
    user = new_user()
    response = await api.assign(book_id, user)
    if not tally.note("assign", response):
        return
    code = response.json()["code"]
    tally.assigned[code] = user
    locks = [api.lock(code, user, LOCK_TTL_SECONDS) for _ in range(2 if contend else 1)]
    token = None
    for response in await asyncio.gather(*locks):
        if tally.note("lock", response):
            tally.locked.add(code)
            token = response.json()["lockToken"]
    if token is None:
        return
    response = await api.redeem(code, user, token)
    if tally.note("redeem", response):
        tally.redeemed[code] = response.json()["timesRedeemed"]


async def churn(api: Api, codes: list[str]) -> int:
    """Assigns each code to a user of its own, locks every other one and redeems
    those with the lock's token; returns how many outbox events that wrote."""

    async def one(at: int, code: str) -> int:
        user = f"user-{code}"
        assert (await api.assign_code(code, user)).status_code == 200
        if at % 2:
            return 1
        locked = await api.lock(code, user, LOCK_TTL_SECONDS)
        assert locked.status_code == 200, locked.text
        redeemed = await api.redeem(code, user, locked.json()["lockToken"])
        assert redeemed.status_code == 200, redeemed.text
        return 3

    written = 0
    for start in range(0, len(codes), 20):
        written += sum(await asyncio.gather(
            *(one(at, code) for at, code in enumerate(codes[start:start + 20], start))))
    return written


async def run_load(api: Api, book_id: str, tally: Tally, *, flows: int, concurrency: int,
                   deadline_s: float, stop: asyncio.Event | None = None,
                   pause_on_error_s: float = 0.0) -> None:
    """At most `flows` checkouts, `concurrency` at a time, for at most
    `deadline_s` seconds or until `stop` is set. Transport errors count as
    failures (status "error"), never as successes."""
    started = time.monotonic()
    queue = iter(range(flows))

    async def worker() -> None:
        for n in queue:
            if (stop is not None and stop.is_set()) or time.monotonic() - started > deadline_s:
                return
            before = tally.failures
            try:
                await checkout(api, book_id, tally, contend=n % 10 == 0)
            except httpx.TransportError as exc:
                tally.statuses[f"error {type(exc).__name__}"] += 1
                tally.failures += 1
            if tally.failures > before and pause_on_error_s:
                await asyncio.sleep(pause_on_error_s)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


@asynccontextmanager
async def load_running(api: Api, book_id: str, *, flows: int, concurrency: int,
                       deadline_s: float, pause_on_error_s: float = 0.0
                       ) -> AsyncIterator[Tally]:
    """`run_load` in the background while the block breaks things; when the
    block ends, passed or failed, the load is stopped and awaited. Yields the
    tally it fills."""
    tally = Tally()
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(api, book_id, tally, flows=flows,
                                        concurrency=concurrency, deadline_s=deadline_s,
                                        stop=stop, pause_on_error_s=pause_on_error_s))
    try:
        yield tally
    finally:
        stop.set()
        await load


def flows_reached(tally: Tally, flows: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return tally.flows >= flows
    return check
