"""Every write that answers a client is committed to disk, whatever the
server's default: this suite's Postgres runs with synchronous_commit=off, as
a deployment tuned for speed might."""

from __future__ import annotations

import pytest

from couponsvc.schemas import CreateBook

from .conftest import OPS, Service

pytestmark = pytest.mark.integration


@pytest.fixture
async def commit_settings(service: Service) -> list[str]:
    """What synchronous_commit was, in the transaction of each write to books,
    codes and events (a trigger notes it): filled as the test runs."""
    async with service.pool.acquire() as conn:
        assert await conn.fetchval("SHOW synchronous_commit") == "off"  # the default here
        await conn.execute("""
            CREATE TABLE seen_commits (tbl text, setting text);
            CREATE FUNCTION note_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              INSERT INTO seen_commits VALUES (TG_TABLE_NAME,
                                               current_setting('synchronous_commit'));
              RETURN NULL;
            END $$;
            CREATE TRIGGER note_commit AFTER INSERT OR UPDATE ON books
              FOR EACH STATEMENT EXECUTE FUNCTION note_commit();
            CREATE TRIGGER note_commit AFTER INSERT OR UPDATE ON codes
              FOR EACH STATEMENT EXECUTE FUNCTION note_commit();
            CREATE TRIGGER note_commit AFTER INSERT OR UPDATE ON events
              FOR EACH STATEMENT EXECUTE FUNCTION note_commit();
        """)
    return []


async def test_creates_uploads_and_applied_events_commit_synchronously(
        service: Service, commit_settings: list[str]) -> None:
    book = await service.books.create(CreateBook(name="Durable", initialCouponAmount=5))
    await service.books.upload(book.id, ["SYNC-1", "SYNC-2"])
    await service.books.upload(book.id, ["SYNC-2", "SYNC-3"])  # the staging-table path
    await service.coupons.assign_code(OPS, "SYNC-1", "erin", None, None)
    await service.drain()

    async with service.pool.acquire() as conn:
        seen = [(r["tbl"], r["setting"]) for r in await conn.fetch("SELECT * FROM seen_commits")]
    assert {table for table, _ in seen} == {"books", "codes", "events"}
    assert {setting for _, setting in seen} == {"on"}, seen
