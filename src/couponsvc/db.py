"""PostgreSQL: the connection pool and the migrations that shape it."""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

log = logging.getLogger("couponsvc")

MIGRATIONS_TABLE = "schema_migrations"
# Any constant will do; it keeps two `couponsvc migrate` runs from racing.
MIGRATION_LOCK_ID = 0x636F7570
# Run first in every transaction whose commit answers a client or acknowledges
# events: whatever the server's default, a commit it reports is on disk (a
# lost commit is lost data).
SYNCHRONOUS_COMMIT = "SET LOCAL synchronous_commit = on"


def rows_written(status: str) -> int:
    """The row count of an INSERT's or UPDATE's command status ("INSERT 0 N")."""
    return int(status.rsplit(" ", 1)[1])


async def connect(database_url: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        database_url, min_size=min_size, max_size=max_size, command_timeout=30
    )
    return pool


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) of every migration shipped in the package, in order."""
    folder = resources.files("couponsvc") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name, f.read_text()) for f in files]


async def migrate(connection: asyncpg.Connection) -> list[str]:
    """Applies the migrations not yet applied, each in its own transaction."""
    applied: list[str] = []
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await connection.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} "
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await connection.fetch(f"SELECT name FROM {MIGRATIONS_TABLE}")}
        for name, sql in migration_files():
            if name in done:
                continue
            async with connection.transaction():
                await connection.execute(sql)
                await connection.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (name) VALUES ($1)", name)
            log.info("applied migration %s", name)
            applied.append(name)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied
