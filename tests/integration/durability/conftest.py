"""Real servers for the durability tools: rebuild, verify and inspect.

Each test gets its own redis-server (free port, no persistence, stopped by its
PID) and its own Postgres database (`pg_url`, from the parent conftest: cloned
from a migrated template in one server for the whole session), so tests may
flush, tamper and compare freely.
The service layer is wired to both as the API wires it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from couponsvc import cli, db, errors
from couponsvc.app import connect_redis
from couponsvc.auth import ADMIN, WRITE, Principal
from couponsvc.books import Books
from couponsvc.coupons import Coupons
from couponsvc.keys import Keys
from couponsvc.rebuild import Summary, rebuild
from couponsvc.records import Records
from couponsvc.schemas import CreateBook
from couponsvc.scripts import Scripts
from couponsvc.settings import Settings
from couponsvc.store import Store
from couponsvc.verify import Difference, collect
from couponsvc.writer import Writer, WriterConfig
from support.cluster import RedisCluster

from ..servers import RedisServer, started

OPS = Principal("ops", frozenset({ADMIN, WRITE}))
# Microseconds that Postgres keeps and Redis's milliseconds drop: rebuild and
# verify must compare at Redis's precision.
VALID_FROM = datetime(2025, 1, 1, 0, 0, 0, 1500, tzinfo=UTC)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own."""
    with started(RedisServer(tmp_path)) as server:
        yield server.url


@dataclass
class Service:
    """The service layer on a real Redis and Postgres, as the API builds it."""

    settings: Settings
    redis: Redis
    pool: asyncpg.Pool
    keys: Keys
    store: Store
    books: Books
    coupons: Coupons
    writer: Writer

    async def drain(self) -> None:
        await self.writer.drain(timeout_s=20)

    async def verify(self) -> list[Difference]:
        async with self.pool.acquire() as conn:
            return await collect(self.redis, conn, self.keys)

    async def rebuild(self, *, force: bool = False, chunk: int = 10_000) -> Summary:
        async with self.pool.acquire() as conn:
            return await rebuild(self.redis, conn, self.keys, force=force, chunk=chunk)

    async def number(self, book_id: str) -> int:
        return (await self.store.book(book_id)).number

    def fresh(self) -> Service:
        """New Store, scripts, services and writer on the same clients: what a
        restarted API and writer hold after Redis was replaced (no caches)."""
        scripts = Scripts(self.redis)
        store = Store(self.redis, scripts, self.settings)
        return Service(self.settings, self.redis, self.pool, self.keys, store,
                       Books(store, Records(self.pool)), Coupons(store),
                       Writer(self.redis, self.pool, self.keys, WriterConfig(claim_idle_ms=0)))


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One local Redis Cluster for the session; tests keep apart by key prefix."""
    with started(RedisCluster(tmp_path_factory.mktemp("cluster"))) as cluster:
        yield cluster


@pytest.fixture(params=["single", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """(url, is a cluster): the write-behind and rebuild tests run on both."""
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url, True
    url: str = request.getfixturevalue("redis_url")
    return url, False


@pytest.fixture
async def service(pg_url: str, redis_target: tuple[str, bool]) -> AsyncIterator[Service]:
    redis_url, cluster = redis_target
    # A prefix other than the default catches any key spelled outside keys.py.
    settings = Settings(env="dev", database_url=pg_url, redis_url=redis_url,
                        redis_cluster=cluster, key_prefix=f"t{uuid.uuid4().hex[:6]}")
    redis = connect_redis(settings)
    pool = await db.connect(pg_url, min_size=1, max_size=4)
    scripts = Scripts(redis)
    await scripts.load()
    store = Store(redis, scripts, settings)
    keys = Keys(settings.key_prefix)
    try:
        yield Service(settings, redis, pool, keys, store, Books(store, Records(pool)),
                      Coupons(store), Writer(redis, pool, keys, WriterConfig(claim_idle_ms=0)))
    finally:
        await redis.aclose()
        await pool.close()


@dataclass
class Scenario:
    """Two books after a mix of admin and checkout calls, drained to Postgres."""

    single: str  # book id: one redemption per code, maxPerUser 2
    multi: str  # book id: up to 3 redemptions per code, a validity window
    redeemed: str  # alice's code in `single`, locked then redeemed
    unlocked: str  # alice's code in `single`, locked then unlocked
    locked: str  # bob's code in `single`, still locked
    twice: str  # carol's code in `multi`, redeemed twice
    once: str  # dave's code in `multi`, redeemed once
    free_single: list[str] = field(default_factory=list)
    free_multi: list[str] = field(default_factory=list)

    @property
    def users(self) -> list[str]:
        return ["alice", "bob", "carol", "dave"]


@pytest.fixture
async def scenario(service: Service) -> Scenario:
    books, coupons = service.books, service.coupons
    single = await books.create(CreateBook(name="Single", description="one use per code",
                                           maxPerUser=2, lockTtlSeconds=120))
    uploaded = [f"S{uuid.uuid4().hex[:10].upper()}" for _ in range(6)]
    assert (await books.upload(single.id, uploaded)).added == 6
    generated = await books.generate(single.id, "G-#####", 4)
    assert generated.codes is not None and len(generated.codes) == 4
    multi = await books.create(CreateBook(
        name="Multi", multipleRedeemsAllowed=True, maxRedeemsPerCode=3,
        validFrom=VALID_FROM, validUntil=datetime.now(UTC) + timedelta(days=30),
        initialCouponAmount=5, codePattern="M-######"))

    redeemed = uploaded[0]
    await coupons.assign_code(OPS, redeemed, "alice", None, None)
    unlocked = (await coupons.assign_random(OPS, single.id, "alice", None)).coupon.code
    locked = (await coupons.assign_random(OPS, single.id, "bob", None)).coupon.code
    with pytest.raises(errors.UserLimitReached):
        await coupons.assign_random(OPS, single.id, "alice", None)
    token = (await coupons.lock(OPS, redeemed, "alice", None))[0].lockToken
    await coupons.redeem(OPS, redeemed, "alice", token, None)
    token = (await coupons.lock(OPS, unlocked, "alice", 30))[0].lockToken
    await coupons.unlock(OPS, unlocked, "alice", token)
    await coupons.lock(OPS, locked, "bob", None)

    twice = (await coupons.assign_random(OPS, multi.id, "carol", None)).coupon.code
    await coupons.redeem(OPS, twice, "carol", None, None)
    await coupons.redeem(OPS, twice, "carol", None, None)
    multi_codes = await _members(service, multi.id)
    once = next(c for c in multi_codes if c != twice)
    await coupons.assign_code(OPS, once, "dave", multi.id, None)
    await coupons.redeem(OPS, once, "dave", None, None)
    await service.drain()

    taken = {redeemed, unlocked, locked}
    return Scenario(
        single=single.id, multi=multi.id, redeemed=redeemed, unlocked=unlocked,
        locked=locked, twice=twice, once=once,
        free_single=sorted(c for c in [*uploaded, *generated.codes] if c not in taken),
        free_multi=sorted(c for c in multi_codes if c not in (twice, once)),
    )


async def _members(service: Service, book_id: str) -> list[str]:
    book = service.keys.book(await service.number(book_id))
    members = [*await service.redis.smembers(book.free),
               *await service.redis.hkeys(book.assigned)]
    return sorted(str(m) for m in members)


@dataclass
class CliResult:
    status: int | str | None
    out: str
    err: str


Cli = Callable[..., Awaitable[CliResult]]


@pytest.fixture
def cli_run(service: Service, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> Cli:
    """Runs `couponsvc ...` in-process (cli.main, in a thread: it calls
    asyncio.run) with the environment pointing at this test's servers."""
    for name in list(os.environ):
        if name.startswith("COUPONSVC_"):
            monkeypatch.delenv(name)
    for name, value in cli_environment(service).items():
        monkeypatch.setenv(name, value)

    def call(argv: list[str]) -> int | str | None:
        try:
            cli.main(argv)
        except SystemExit as exc:
            return exc.code
        raise AssertionError("cli.main returned without SystemExit")

    async def run(*argv: str) -> CliResult:
        capsys.readouterr()
        status = await asyncio.to_thread(call, list(argv))
        captured = capsys.readouterr()
        return CliResult(status, captured.out, captured.err)

    return run


def cli_environment(service: Service) -> dict[str, str]:
    return {
        "COUPONSVC_ENV": "dev",
        "COUPONSVC_DATABASE_URL": service.settings.database_url,
        "COUPONSVC_REDIS_URL": service.settings.redis_url,
        "COUPONSVC_KEY_PREFIX": service.settings.key_prefix,
        "COUPONSVC_REDIS_CLUSTER": "true" if service.settings.redis_cluster else "false",
    }
