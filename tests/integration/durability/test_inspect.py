"""inspect: one code or one book, what Redis and Postgres each hold."""

from __future__ import annotations

import pytest

from couponsvc.inspect import DIFFERS, inspect_book, inspect_code

from .conftest import OPS, Cli, Scenario, Service

pytestmark = pytest.mark.integration


def row(text: str, label: str) -> list[str]:
    """The cells of the table row with this label."""
    for line in text.splitlines():
        cells = line.split()
        if line.startswith("  ") and " ".join(cells).startswith(label + " "):
            return line[2:].split("  ")
    raise AssertionError(f"no row {label!r} in:\n{text}")


def cells(text: str, label: str) -> list[str]:
    return [c.strip() for c in row(text, label)[1:] if c.strip()]


async def code_report(service: Service, code: str) -> str | None:
    async with service.pool.acquire() as conn:
        return await inspect_code(service.redis, conn, service.keys, code)


async def book_report(service: Service, ident: str) -> str | None:
    async with service.pool.acquire() as conn:
        return await inspect_book(service.redis, conn, service.keys, ident)


async def test_a_locked_code_on_both_sides(service: Service, scenario: Scenario) -> None:
    code, number = scenario.locked, await service.number(scenario.single)
    text = await code_report(service, code)
    assert text is not None

    assert text.splitlines()[0].startswith(f"code {code} (directory bucket ")
    assert cells(text, "book") == [f"{number} {scenario.single}"] * 2
    assert cells(text, "directory") == [f"{service.keys.directory(code)} -> {number}", "(n/a)"]
    assert cells(text, "state") == ["assigned", "assigned"]
    assert cells(text, "owner") == ["bob", "bob"]
    assert cells(text, "version") == ["2", "2"]
    assert cells(text, "timesRedeemed") == ["0", "0"]
    lock = cells(text, "lock key")
    assert lock[0].startswith("PTTL ") and lock[0].endswith("token present")
    assert lock[1] == "(not durable)"
    assert cells(text, "locks zset")[0].endswith("(live)")
    assert f"\noutbox {service.keys.book(number).events}: 0 entries; group writer:" \
        " pending 0, lag 0" in text
    assert DIFFERS not in text
    events = text.split("last 10 events in postgres (newest first):\n")[1].splitlines()
    assert [e.split()[1] for e in events] == ["locked", "assigned"]
    assert all("user=bob" in e for e in events)


async def test_a_difference_is_marked(service: Service, scenario: Scenario) -> None:
    code, number = scenario.twice, await service.number(scenario.multi)
    assigned = service.keys.book(number).assigned
    raw = str(await service.redis.hget(assigned, code))
    await service.redis.hset(assigned, code, raw.replace("|2|", "|1|", 1))

    text = await code_report(service, code)
    assert text is not None

    assert row(text, "timesRedeemed")[-1].strip() == DIFFERS
    assert cells(text, "timesRedeemed") == ["1", "2", DIFFERS]
    assert DIFFERS not in " ".join(row(text, "owner"))


async def test_a_code_missing_in_redis_shows_postgres(service: Service,
                                                      scenario: Scenario) -> None:
    code, number = scenario.free_single[0], await service.number(scenario.single)
    book = service.keys.book(number)
    await service.redis.srem(book.free, code)
    await service.redis.hdel(service.keys.directory(code), code)

    text = await code_report(service, code)
    assert text is not None

    assert cells(text, "state") == ["absent", "free", DIFFERS]
    assert cells(text, "directory")[0].endswith(": none")
    assert cells(text, "book")[0] == f"- (no directory entry; rows below from book {number})"
    assert text.rstrip().endswith("(none)")  # no events: it was never assigned


async def test_a_corrupted_directory_entry_shows_postgres(service: Service,
                                                          scenario: Scenario) -> None:
    code = scenario.free_single[0]
    await service.redis.hset(service.keys.directory(code), code, "garbage")

    text = await code_report(service, code)

    assert text is not None and "garbage" in text


async def test_an_unknown_code(service: Service, scenario: Scenario, cli_run: Cli) -> None:
    assert await code_report(service, "NO-SUCH-CODE") is None
    result = await cli_run("inspect", "NO-SUCH-CODE")
    assert result.status == 1
    assert "unknown to both Redis and Postgres" in result.err


async def test_a_book_on_both_sides(service: Service, scenario: Scenario) -> None:
    number = await service.number(scenario.multi)
    text = await book_report(service, scenario.multi)
    assert text is not None
    by_number = await book_report(service, str(number))

    assert text == by_number
    assert text.splitlines()[0] == f"book {number} ({scenario.multi})"
    assert cells(text, "name") == ["Multi", "Multi"]
    assert cells(text, "maxRedeemsPerCode") == ["3", "3"]
    assert cells(text, "maxPerUser") == ["(absent)", "(absent)"]
    assert cells(text, "validFrom") == ["1735689600001 (2025-01-01T00:00:00.001Z)"] * 2
    assert cells(text, "description") == ['""', '""']
    assert cells(text, "total (meta / rows)") == ["5", "5"]
    assert cells(text, "assigned (meta / owner set)") == ["2", "2"]
    assert cells(text, "redeemed (meta / sum)") == ["3", "3"]
    assert cells(text, "free (set / owner null)") == ["3", "3"]
    assert cells(text, "users holding codes") == ["(n/a)", "2"]
    assert DIFFERS not in text
    assert f"\noutbox {service.keys.book(number).events}: 0 entries; group writer:" \
        " pending 0, lag 0" in text
    # book_created, codes_added, 2 assigned, 3 redeemed
    assert "\npostgres 7 event row(s), last at " in text
    assert text.endswith("; 0 parked event(s)")


async def test_a_book_with_undrained_events(service: Service, scenario: Scenario) -> None:
    await service.coupons.assign_random(OPS, scenario.multi, "erin", None)
    text = await book_report(service, scenario.multi)
    assert text is not None

    assert cells(text, "assigned (meta / owner set)") == ["3", "2", DIFFERS]
    assert "group writer: pending 0, lag 1" in text


async def test_an_unknown_book(service: Service, scenario: Scenario, cli_run: Cli) -> None:
    assert await book_report(service, "00000000-0000-0000-0000-000000000000") is None
    assert await book_report(service, "42") is None
    result = await cli_run("inspect", "--book", "42")
    assert result.status == 1
    assert "book 42 is unknown" in result.err
