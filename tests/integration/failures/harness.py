"""Processes and comparisons shared by the write-behind failure tests.

Every process here is started by the suite on a port chosen at run time and
stopped by its own PID; nothing is ever killed by name.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from couponsvc.outbox import GROUP
from support.cluster import RedisCluster

from ..api_client import Api
from ..redis_state import book_keys
from ..servers import PROJECT_ROOT, ApiServer, RedisServer, stop_process
from .load import Tally

# A writer presumed dead once its entries sit unacknowledged this long.
CLAIM_IDLE_MS = "500"
CLI_TIMEOUT_SECONDS = 60.0


@dataclass
class AofRedis(RedisServer):
    """A redis-server persisting to an append-only file, as production runs it:
    restarted on the same port and folder, it replays what it acknowledged."""

    def persistence(self) -> list[str]:
        return ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]


@dataclass
class Durable:
    """A redis-server, a PostgreSQL database, the API on both, and the writer
    processes a test starts; `close()` stops every one of them."""

    redis: RedisServer | RedisCluster
    pg_url: str
    api: ApiServer
    directory: Path
    writers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. cluster mode

    @property
    def env(self) -> dict[str, str]:
        """The environment the API runs with, for the other couponsvc commands."""
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("COUPONSVC_")}
        env.update({
            "COUPONSVC_REDIS_URL": self.redis.url,
            "COUPONSVC_DATABASE_URL": self.pg_url,
            "COUPONSVC_JWT_SECRET": self.api.secret,
            "COUPONSVC_ENV": "test",
            "COUPONSVC_KEY_PREFIX": "cb",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        })
        return env

    def start_writer(self, *extra: str, database_url: str | None = None
                     ) -> subprocess.Popen[bytes]:
        """`couponsvc writer --claim-idle-ms 500`, logging to its own file."""
        log_path = self.directory / f"writer-{len(self.logs)}.log"
        self.logs.append(log_path)
        env = self.env
        if database_url is not None:
            env["COUPONSVC_DATABASE_URL"] = database_url
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "couponsvc", "writer", "--claim-idle-ms", CLAIM_IDLE_MS,
                 *extra],
                cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        self.writers.append(process)
        return process

    async def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """One `couponsvc ...` command to completion, bounded in time."""
        return await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "couponsvc", *argv], cwd=PROJECT_ROOT,
            env=self.env, capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS)

    async def drain(self) -> None:
        done = await self.run("writer", "--drain", "--claim-idle-ms", CLAIM_IDLE_MS)
        assert done.returncode == 0, f"writer --drain failed:\n{done.stderr[-4000:]}"

    async def verify(self) -> None:
        done = await self.run("verify")
        assert done.returncode == 0, f"verify found differences:\n{done.stdout[-4000:]}"

    def writer_log(self, process: subprocess.Popen[bytes]) -> str:
        path = self.logs[self.writers.index(process)]
        return path.read_text(errors="replace") if path.exists() else ""

    def writer_logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
                         for path in self.logs if path.exists())

    def close(self) -> None:
        for process in self.writers:
            stop_process(process)
        self.api.stop()  # the Redis server is its fixture's to stop (redis_server)


async def stream_of(redis: Redis, book_id: str) -> str:
    return f"{await book_keys(redis, book_id)}:events"


def _ms(moment: datetime | None) -> int:
    return 0 if moment is None else round(moment.timestamp() * 1000)


async def differences(redis: Redis, conn: asyncpg.Connection, book_id: str) -> list[str]:
    """Each code of the book whose state differs: Redis's `assigned` hash and
    `free` set against Postgres's codes rows (owner, assignedAt, times
    redeemed, last redemption, version)."""
    prefix = await book_keys(redis, book_id)
    expected: dict[str, tuple[Any, ...]] = {
        code: (None, 0, 0, 0, 0) for code in await redis.smembers(f"{prefix}:free")}
    for code, raw in (await redis.hgetall(f"{prefix}:assigned")).items():
        owner, at, times, last, version = raw.split("|")
        expected[code] = (owner, int(at), int(times), int(last), int(version))
    rows = await conn.fetch(
        "SELECT code, owner, assigned_at, times_redeemed, last_redeemed_at, version"
        " FROM codes WHERE book_id = $1", book_id)
    actual = {r["code"]: (r["owner"], _ms(r["assigned_at"]), r["times_redeemed"],
                          _ms(r["last_redeemed_at"]), r["version"]) for r in rows}
    return [f"{code}: redis={expected.get(code)} postgres={actual.get(code)}"
            for code in sorted(expected.keys() | actual.keys())
            if expected.get(code) != actual.get(code)]


async def event_types(conn: asyncpg.Connection, book_id: str) -> Counter[str]:
    rows = await conn.fetch(
        "SELECT type, count(*) AS n FROM events WHERE book_id = $1 GROUP BY type", book_id)
    return Counter({r["type"]: r["n"] for r in rows})


async def duplicate_events(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM events GROUP BY book_id, stream_id"
        " HAVING count(*) > 1) AS twice"))


async def unacknowledged(redis: Redis, stream: str) -> int:
    """Entries of the stream the writers' group has not acknowledged: pending
    (delivered) plus not yet delivered (the group's lag)."""
    groups = [g for g in await redis.xinfo_groups(stream) if g["name"] == GROUP]
    if not groups:
        return int(await redis.xlen(stream))
    return int(groups[0]["pending"]) + int(groups[0]["lag"] or 0)


async def kill_holding_entries(process: subprocess.Popen[bytes], redis: Redis, stream: str,
                               attempts: int = 500) -> int:
    """SIGKILLs a running writer at a moment it holds delivered but unacknowledged
    entries (it is paused with SIGSTOP while its pending entries are counted);
    returns how many it held."""
    for _ in range(attempts):
        process.send_signal(signal.SIGSTOP)
        held = int((await redis.xpending(stream, GROUP))["pending"])
        if held:
            stop_process(process, signal.SIGKILL)
            return held
        process.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.005)
    raise AssertionError(f"the writer never held unacknowledged entries in {attempts} tries")


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float, what: str,
                   interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(interval)


async def wait_until_serving(api: Api, book_id: str, user: str, timeout: float,
                             what: str) -> None:
    """Retries one user's assign until the API answers 200: the moment it
    serves again after Redis failed."""
    async def serving() -> bool:
        return (await api.assign(book_id, user)).status_code == 200
    await wait_for(serving, timeout, what, interval=0.2)


async def assert_acknowledged_in_postgres(
        stack: Durable, writer: subprocess.Popen[bytes], redis: Redis,
        conn: asyncpg.Connection, stream: str, book_id: str, tally: Tally,
        catch_up_seconds: float) -> None:
    """The running writer catches up by itself, then after a drain every
    assignment and redemption the API acknowledged (`tally`) is in Postgres."""
    async def caught_up() -> bool:
        return await unacknowledged(redis, stream) == 0 or writer.poll() is not None
    await wait_for(caught_up, catch_up_seconds, "the writer to catch up", interval=0.25)
    assert writer.poll() is None, f"the writer exited:\n{stack.writer_log(writer)[-1500:]}"
    await stack.drain()

    rows = {r["code"]: r for r in await conn.fetch(
        "SELECT code, owner, times_redeemed FROM codes WHERE book_id = $1", book_id)}
    lost = [code for code, user in tally.assigned.items()
            if code not in rows or rows[code]["owner"] != user]
    assert lost == [], f"{len(lost)} acknowledged assignments missing from Postgres"
    unredeemed = [code for code, times in tally.redeemed.items()
                  if rows[code]["times_redeemed"] != times]
    assert unredeemed == [], f"{len(unredeemed)} acknowledged redemptions missing"
