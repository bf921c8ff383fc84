"""Throw-away PostgreSQL clusters holding a migrated template database, and
fresh databases cloned from it (one per test: tests may compare whole tables)."""

from __future__ import annotations

import asyncio
import uuid
import warnings

import asyncpg

from couponsvc import db
from support.postgres import Postgres, remove, start_postgres

TEMPLATE = "failures_template"


def database_url(server: Postgres, name: str) -> str:
    return server.url.rsplit("/", 1)[0] + f"/{name}"


def new_cluster() -> Postgres:
    """A migrated cluster holding the template database the tests clone."""
    with warnings.catch_warnings():
        # support/postgres.py leaves its log file object to the server process
        # (a ResourceWarning, an error under this suite's filters).
        warnings.simplefilter("ignore", ResourceWarning)
        server = start_postgres()

    async def make_template() -> None:
        admin = await asyncpg.connect(server.url)
        try:
            await admin.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await admin.close()
        conn = await asyncpg.connect(database_url(server, TEMPLATE))
        try:
            await db.migrate(conn)
        finally:
            await conn.close()

    try:
        asyncio.run(make_template())
    except BaseException:
        remove(server)
        raise
    return server


async def new_database(server: Postgres) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server.url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    finally:
        await admin.close()
    return database_url(server, name)
