"""verify: agreement after a drain, and each kind of tampering reported exactly."""

from __future__ import annotations

import pytest

from couponsvc.books import Books
from couponsvc.mirror import iso
from couponsvc.schemas import CreateBook
from couponsvc.verify import Difference

from .conftest import OPS, Cli, Scenario, Service

pytestmark = pytest.mark.integration


async def test_a_drained_service_agrees(service: Service, scenario: Scenario) -> None:
    assert await service.verify() == []


async def test_events_not_yet_drained_are_differences(service: Service,
                                                      scenario: Scenario) -> None:
    code = scenario.free_single[0]
    await service.coupons.assign_code(OPS, code, "erin", None, None)
    number = await service.number(scenario.single)

    found = await service.verify()

    subject = f"code {code} (book {number})"
    assert [d for d in found if d.subject == subject] == [Difference(subject, "state", (
        f"redis=assigned ({await _assigned(service, scenario.single, code)}) postgres=free"))]
    assert Difference(f"book {number} ({scenario.single})", "assigned",
                      "redis=4 postgres=3") in found
    await service.drain()
    assert await service.verify() == []


async def test_a_wrong_owner_in_redis(service: Service, scenario: Scenario) -> None:
    code, number = scenario.redeemed, await service.number(scenario.single)
    raw = await _assigned(service, scenario.single, code)
    await service.redis.hset(service.keys.book(number).assigned, code,
                             "mallory|" + raw.split("|", 1)[1])

    assert await service.verify() == [
        Difference(f"code {code} (book {number})", "owner", "redis=mallory postgres=alice")]


async def test_a_free_code_deleted_from_redis(service: Service, scenario: Scenario) -> None:
    code, number = scenario.free_multi[0], await service.number(scenario.multi)
    assert await service.redis.srem(service.keys.book(number).free, code) == 1

    assert await service.verify() == [
        Difference(f"code {code} (book {number})", "only in postgres", "free")]


async def test_a_codes_row_changed_in_postgres(service: Service, scenario: Scenario) -> None:
    code, number = scenario.twice, await service.number(scenario.multi)
    async with service.pool.acquire() as conn:
        before = await conn.fetchval(
            "SELECT last_redeemed_at FROM codes WHERE code = $1", code)
        await conn.execute("UPDATE codes SET times_redeemed = 3, last_redeemed_at = NULL"
                           " WHERE code = $1", code)
    stamp = iso(int(before.timestamp() * 1000))

    assert sorted(await service.verify(), key=str) == sorted([
        Difference(f"book {number} ({scenario.multi})", "redeemed", "redis=3 postgres=4"),
        Difference(f"code {code} (book {number})", "timesRedeemed", "redis=2 postgres=3"),
        Difference(f"code {code} (book {number})", "lastRedeemedAt",
                   f"redis={stamp} postgres=-"),
    ], key=str)


async def test_a_directory_entry_deleted(service: Service, scenario: Scenario) -> None:
    code, number = scenario.locked, await service.number(scenario.single)
    bucket = service.keys.directory(code)
    assert await service.redis.hdel(bucket, code) == 1

    assert await service.verify() == [
        Difference(f"code {code} (book {number})", "directory", f"no entry in {bucket}")]


async def test_a_directory_entry_pointing_to_another_book(service: Service,
                                                          scenario: Scenario) -> None:
    code, number = scenario.free_single[1], await service.number(scenario.single)
    other = await service.number(scenario.multi)
    await service.redis.hset(service.keys.directory(code), code, other)

    assert await service.verify() == [
        Difference(f"code {code} (book {number})", "directory", f"points to book {other}")]


async def test_a_code_only_in_redis_and_a_setting(service: Service, scenario: Scenario) -> None:
    number = await service.number(scenario.single)
    book = service.keys.book(number)
    await service.redis.sadd(book.free, "STRAY-1")
    await service.redis.hset(book.meta, "maxPerUser", 5)
    await service.redis.hdel(book.meta, "description")

    subject = f"book {number} ({scenario.single})"
    assert sorted(map(str, await service.verify())) == sorted([
        f"{subject}: description: redis=(absent) postgres=one use per code",
        f"{subject}: maxPerUser: redis=5 postgres=2",
        f"code STRAY-1 (book {number}): only in redis: free",
    ])


async def test_a_free_code_assigned_in_postgres_only(service: Service,
                                                     scenario: Scenario) -> None:
    code, number = scenario.free_single[2], await service.number(scenario.single)
    async with service.pool.acquire() as conn:
        await conn.execute("UPDATE codes SET owner = 'zoe', assigned_at = now(), version = 1"
                           " WHERE code = $1", code)

    found = {str(d) for d in await service.verify()}

    assert f"code {code} (book {number}): state: redis=free postgres=assigned to zoe" in found
    assert f"book {number} ({scenario.single}): assigned: redis=3 postgres=4" in found
    # The user's per-book set in Redis does not hold it either (maxPerUser counts it).
    assert any(line.startswith(f"user zoe (book {number}): codes: redis=0 postgres=1")
               for line in found)


async def test_a_lost_user_index_entry(service: Service, scenario: Scenario) -> None:
    code, number = scenario.once, await service.number(scenario.multi)
    user_key = service.keys.book(number).user("dave")
    await service.redis.zrem(user_key, code)

    assert set(map(str, await service.verify())) == {
        f"code {code} (book {number}): user index: not in {user_key}",
        f"user dave (book {number}): codes: redis=0 postgres=1 ({user_key})",
    }


async def test_a_book_missing_from_the_redis_index(service: Service,
                                                   scenario: Scenario) -> None:
    number = await service.number(scenario.multi)
    await service.redis.hdel(service.keys.books, scenario.multi)

    assert await service.verify() == [Difference(
        f"book {number} ({scenario.multi})", "only in postgres", f"not in {service.keys.books}")]


async def test_corrupted_book_numbers_are_differences_not_a_crash(
        service: Service, scenario: Scenario) -> None:
    """What verify is run for: a Redis that cannot be trusted."""
    await service.redis.hset(service.keys.books, scenario.multi, "x1")
    await service.redis.set(service.keys.book_seq, "abc")

    found = await service.verify()

    assert Difference(f"book {scenario.multi}", service.keys.books,
                      "redis='x1' is not a book number") in found
    assert Difference("books", service.keys.book_seq,
                      "redis='abc' is not a book number") in found
    assert Difference(f"book 2 ({scenario.multi})", "only in postgres",
                      f"not in {service.keys.books}") in found


async def test_a_book_only_in_redis(service: Service, scenario: Scenario) -> None:
    # Books without Records writes Redis alone, as a deployment without Postgres does.
    book = await Books(service.store).create(CreateBook(name="Redis only"))
    await Books(service.store).upload(book.id, ["ONLY-R1", "ONLY-R2"])
    number = await service.number(book.id)

    assert await service.verify() == [
        Difference(f"book {number} ({book.id})", "only in redis", "postgres has no such book"),
        Difference(f"code ONLY-R1 (book {number})", "only in redis", "free"),
        Difference(f"code ONLY-R2 (book {number})", "only in redis", "free"),
    ]


async def test_the_command_exits_0_then_1(service: Service, scenario: Scenario,
                                          cli_run: Cli) -> None:
    clean = await cli_run("verify")
    assert (clean.status, clean.out) == (0, "")
    assert "verify: 0 difference(s); 2 book(s), 15 code(s) compared" in clean.err

    number = await service.number(scenario.single)
    await service.redis.srem(service.keys.book(number).free, *scenario.free_single[:3])
    dirty = await cli_run("verify")
    assert dirty.status == 1
    assert dirty.out.splitlines() == [f"code {code} (book {number}): only in postgres: free"
                                      for code in scenario.free_single[:3]]
    limited = await cli_run("verify", "--limit", "1")
    assert limited.status == 1 and len(limited.out.splitlines()) == 1


async def _assigned(service: Service, book_id: str, code: str) -> str:
    raw = await service.redis.hget(service.keys.book(await service.number(book_id)).assigned,
                                   code)
    assert raw is not None
    return str(raw)


async def test_codes_of_no_book_are_reported(service: Service, scenario: Scenario) -> None:
    """codes.book_id has no foreign key, so verify is what catches an orphan."""
    await service.pool.execute(
        "INSERT INTO codes (code, book_id) VALUES ('ORPHAN-1', gen_random_uuid())")

    found = await service.verify()

    assert [d.what for d in found] == ["codes"]
    assert found[0].detail == "1 code(s) in Postgres belong to no book"
