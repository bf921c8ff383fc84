"""lock, unlock and redeem through Coupons, and the version numbers they write."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from couponsvc import errors
from couponsvc import writer as writer_module
from couponsvc.writer import Writer

pytestmark = pytest.mark.unit


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def state_of(event: dict[str, str]) -> str:
    """An event's code state, in the assigned hash's format."""
    return "|".join(event[f] for f in ("user", "assignedAt", "times", "last", "v"))


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
async def bobs_code(make_book, coupons, writer):
    """Book 1 with codes C1 (assigned to bob) and C2 (free)."""
    book = await make_book(["C1", "C2"])
    await coupons.assign_code(writer, "C1", "bob", None, None)
    return book


# --- lock --------------------------------------------------------------------


async def test_lock_returns_a_token_and_sets_an_expiring_lock(bobs_code, coupons, writer, redis,
                                                              events):
    before = datetime.now(UTC)
    result, _ = await coupons.lock(writer, "C1", "bob", None)

    assert (result.code, result.couponBookId, result.assignedTo) == ("C1", bobs_code.id, "bob")
    assert len(result.lockToken) >= 16
    # The book's default lock is 300 s.
    assert before + timedelta(seconds=299) < result.lockedUntil
    assert result.lockedUntil < datetime.now(UTC) + timedelta(seconds=301)
    assert await redis.get("cb:{book:1}:lock:C1") == result.lockToken
    assert 299_000 < await redis.pttl("cb:{book:1}:lock:C1") <= 300_000
    assert await redis.zscore("cb:{book:1}:locks", "C1") == ms(result.lockedUntil)
    event = (await events(bobs_code.id))[-1]
    assert event.items() >= {"type": "locked", "code": "C1", "user": "bob",
                             "until": str(ms(result.lockedUntil)), "v": "2"}.items()


async def test_lock_with_explicit_ttl(bobs_code, coupons, writer, redis):
    result, _ = await coupons.lock(writer, "C1", "bob", 5)

    assert 4_000 < await redis.pttl("cb:{book:1}:lock:C1") <= 5_000
    assert result.lockedUntil < datetime.now(UTC) + timedelta(seconds=6)


async def test_second_lock_is_refused_with_when_to_retry(bobs_code, coupons, writer, redis):
    first, _ = await coupons.lock(writer, "C1", "bob", None)

    with pytest.raises(errors.CodeLocked) as caught:
        await coupons.lock(writer, "C1", "bob", None)

    # Derived from PTTL, so it may differ from the holder's lockedUntil by a millisecond.
    told = datetime.fromisoformat(caught.value.extra["lockedUntil"])
    assert abs(told - first.lockedUntil) <= timedelta(milliseconds=2)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp(told))
    assert caught.value.extra["lockedUntil"] == stamp(told)
    assert 299 <= caught.value.retry_after <= 300
    assert caught.value.headers() == {"Retry-After": str(caught.value.retry_after)}
    assert await redis.get("cb:{book:1}:lock:C1") == first.lockToken


async def test_lock_refusals(bobs_code, coupons, writer, alice, redis, events):
    before = await events(bobs_code.id)

    with pytest.raises(errors.CodeNotAssigned):
        await coupons.lock(writer, "C1", "carol", None)  # bob's code
    with pytest.raises(errors.CodeNotFound):
        await coupons.lock(alice, "C1", "alice", None)  # end user: not theirs = unknown
    with pytest.raises(errors.CodeNotAssigned):
        await coupons.lock(writer, "C2", "bob", None)  # free code
    with pytest.raises(errors.CodeNotFound):
        await coupons.lock(writer, "NOPE", "bob", None)
    with pytest.raises(errors.Forbidden):
        await coupons.lock(alice, "C1", "bob", None)

    assert await redis.exists("cb:{book:1}:lock:C1", "cb:{book:1}:lock:C2") == 0
    assert await events(bobs_code.id) == before


async def test_lock_of_a_redeemed_code(bobs_code, coupons, writer, redis):
    await coupons.redeem(writer, "C1", "bob", None, None)

    with pytest.raises(errors.CodeRedeemed):
        await coupons.lock(writer, "C1", "bob", None)
    assert await redis.exists("cb:{book:1}:lock:C1") == 0


async def test_lock_and_redeem_outside_the_validity_window(bobs_code, coupons, writer, redis):
    past = ms(datetime.now(UTC) - timedelta(seconds=1))
    await redis.hset("cb:{book:1}:meta", "validUntil", past)

    with pytest.raises(errors.BookNotActive):
        await coupons.lock(writer, "C1", "bob", None)
    with pytest.raises(errors.BookNotActive):
        await coupons.redeem(writer, "C1", "bob", None, None)
    assert (await redis.hget("cb:{book:1}:assigned", "C1")).endswith("|0|0|1")


async def test_a_used_up_code_says_so_also_after_the_window(bobs_code, coupons, writer, redis):
    """Redeemed is for good; "not active" would suggest it might work later."""
    await coupons.redeem(writer, "C1", "bob", None, None)
    await redis.hset("cb:{book:1}:meta", "validUntil", ms(datetime.now(UTC)) - 1000)

    with pytest.raises(errors.CodeRedeemed):
        await coupons.lock(writer, "C1", "bob", None)
    with pytest.raises(errors.CodeRedeemed):
        await coupons.redeem(writer, "C1", "bob", None, None)
    _, _, times, _, version = (await redis.hget("cb:{book:1}:assigned", "C1")).split("|")
    assert (times, version) == ("1", "2")


async def test_expired_lock_is_recorded_before_the_next_lock(bobs_code, coupons, writer, redis,
                                                             events):
    first, _ = await coupons.lock(writer, "C1", "bob", 1)
    await asyncio.sleep(1.1)
    assert await redis.exists("cb:{book:1}:lock:C1") == 0

    second, _ = await coupons.lock(writer, "C1", "bob", None)

    assert second.lockToken != first.lockToken
    assert await redis.get("cb:{book:1}:lock:C1") == second.lockToken
    kinds = [(e["type"], e["code"], e["v"]) for e in await events(bobs_code.id)]
    assert kinds[-3:] == [("locked", "C1", "2"), ("lock_expired", "C1", "3"),
                          ("locked", "C1", "4")]
    assert (await redis.hget("cb:{book:1}:assigned", "C1")).endswith("|4")


async def test_lock_records_expired_locks_of_other_codes(make_book, coupons, writer, redis,
                                                         events, books):
    book = await make_book(["C1", "C2"])
    for code in ("C1", "C2"):
        await coupons.assign_code(writer, code, "bob", None, None)
    await coupons.lock(writer, "C2", "bob", 1)
    await asyncio.sleep(1.1)

    await coupons.lock(writer, "C1", "bob", None)

    assert await redis.zrange("cb:{book:1}:locks", 0, -1) == ["C1"]
    assert (await redis.hget("cb:{book:1}:assigned", "C2")).endswith("|3")
    expired = [e for e in await events(book.id) if e["type"] == "lock_expired"]
    assert [(e["code"], e["user"], e["v"]) for e in expired] == [("C2", "bob", "3")]
    assert state_of(expired[0]) == await redis.hget("cb:{book:1}:assigned", "C2")
    assert (await books.get(book.id)).counts.locked == 1


async def run_out(redis, code: str, ended_at: int) -> None:
    """The lock of `code` ran out at `ended_at`, as Redis leaves it: the key
    gone by itself, the locks zset still holding its end (not waited for)."""
    await redis.delete(f"cb:{{book:1}}:lock:{code}")
    await redis.zadd("cb:{book:1}:locks", {code: ended_at})


async def test_an_expiry_is_dated_when_the_lock_ended(bobs_code, coupons, writer, redis,
                                                      events):
    await coupons.lock(writer, "C1", "bob", 60)
    ended = ms(datetime.now(UTC)) - 5_000
    await run_out(redis, "C1", ended)

    await coupons.lock(writer, "C1", "bob", None)

    expired = [e for e in await events(bobs_code.id) if e["type"] == "lock_expired"]
    assert [(e["code"], e["at"], e["v"]) for e in expired] == [("C1", str(ended), "3")]


async def test_a_redeem_after_a_lock_ran_out_records_the_expiry_first(bobs_code, coupons, writer,
                                                                      redis, events):
    """Without it the trail read locked -> redeemed, as if redeemed under the lock."""
    await coupons.lock(writer, "C1", "bob", 60)
    ended = ms(datetime.now(UTC)) - 5_000
    await run_out(redis, "C1", ended)

    await coupons.redeem(writer, "C1", "bob", None, None)

    trail = [(e["type"], e["v"]) for e in await events(bobs_code.id) if e.get("code") == "C1"]
    assert trail == [("assigned", "1"), ("locked", "2"), ("lock_expired", "3"), ("redeemed", "4")]
    assert await redis.zrange("cb:{book:1}:locks", 0, -1) == []
    owner, _, times, _, version = (await redis.hget("cb:{book:1}:assigned", "C1")).split("|")
    assert (owner, times, version) == ("bob", "1", "4")


async def test_a_redeem_under_its_lock_records_no_expiry(bobs_code, coupons, writer, events):
    lock, _ = await coupons.lock(writer, "C1", "bob", 60)

    await coupons.redeem(writer, "C1", "bob", lock.lockToken, None)

    trail = [e["type"] for e in await events(bobs_code.id) if e.get("code") == "C1"]
    assert trail == ["assigned", "locked", "redeemed"]


# --- the writer's sweep of ended locks -------------------------------------------


async def test_the_sweep_records_ended_locks_that_nothing_else_would(
        make_book, coupons, writer, redis, events, store):
    """A book that gets no later lock or redeem (one past its validUntil, say)
    would keep its ended locks unrecorded, and Postgres would show them locked."""
    book = await make_book(["C1", "C2", "C3"])
    for code in ("C1", "C2", "C3"):
        await coupons.assign_code(writer, code, "bob", None, None)
        await coupons.lock(writer, code, "bob", 60)
    ended = ms(datetime.now(UTC)) - 5_000
    await run_out(redis, "C2", ended)
    await run_out(redis, "C3", ended + 1)

    await Writer(redis, cast(Any, None), store.keys).record_expired_locks(store.keys.book(1))

    expired = [e for e in await events(book.id) if e["type"] == "lock_expired"]
    assert [(e["code"], e["at"], e["v"]) for e in expired] == [
        ("C2", str(ended), "3"), ("C3", str(ended + 1), "3")]
    assert state_of(expired[0]) == await redis.hget("cb:{book:1}:assigned", "C2")
    assert await redis.zrange("cb:{book:1}:locks", 0, -1) == ["C1"]  # still live
    assert (await redis.hget("cb:{book:1}:assigned", "C1")).endswith("|2")


async def test_a_sweep_records_its_slices_then_leaves_the_rest_for_the_next(
        make_book, coupons, writer, redis, events, store, monkeypatch):
    monkeypatch.setattr(writer_module, "SWEEP_SLICE", 2)
    monkeypatch.setattr(writer_module, "SWEEP_SLICES", 2)
    codes = [f"C{n}" for n in range(1, 6)]
    book = await make_book(codes)
    ended = ms(datetime.now(UTC)) - 5_000
    for code in codes:
        await coupons.assign_code(writer, code, "bob", None, None)
        await coupons.lock(writer, code, "bob", 60)
    for n, code in enumerate(codes):
        await run_out(redis, code, ended + n)
    sweeper = Writer(redis, cast(Any, None), store.keys)

    await sweeper.record_expired_locks(store.keys.book(1))
    first = [e["code"] for e in await events(book.id) if e["type"] == "lock_expired"]
    await sweeper.record_expired_locks(store.keys.book(1))
    both = [e["code"] for e in await events(book.id) if e["type"] == "lock_expired"]

    assert first == codes[:4]  # oldest first, two slices of two
    assert both == codes
    assert await redis.zcard("cb:{book:1}:locks") == 0


# --- unlock ------------------------------------------------------------------


async def test_unlock_with_the_token(bobs_code, coupons, writer, redis, events):
    lock, _ = await coupons.lock(writer, "C1", "bob", None)

    coupon = await coupons.unlock(writer, "C1", "bob", lock.lockToken)

    assert (coupon.status, coupon.locked, coupon.lockedUntil) == ("assigned", False, None)
    assert await redis.exists("cb:{book:1}:lock:C1") == 0
    assert await redis.zscore("cb:{book:1}:locks", "C1") is None
    assert (await events(bobs_code.id))[-1].items() >= {
        "type": "unlocked", "code": "C1", "user": "bob", "v": "3"}.items()
    # Locked again right away, by anyone holding the code.
    assert (await coupons.lock(writer, "C1", "bob", None))[0].lockToken != lock.lockToken


async def test_unlock_refusals(bobs_code, coupons, writer, alice, redis):
    with pytest.raises(errors.NotLocked):
        await coupons.unlock(writer, "C1", "bob", "whatever")
    lock, _ = await coupons.lock(writer, "C1", "bob", None)

    with pytest.raises(errors.CodeLocked):
        await coupons.unlock(writer, "C1", "bob", "not-the-token")
    with pytest.raises(errors.CodeNotAssigned):
        await coupons.unlock(writer, "C1", "carol", lock.lockToken)
    with pytest.raises(errors.CodeNotFound):
        await coupons.unlock(alice, "C1", "alice", lock.lockToken)

    assert await redis.get("cb:{book:1}:lock:C1") == lock.lockToken


async def test_an_operator_releases_a_lock_whose_token_was_lost(bobs_code, coupons, admin,
                                                                redis, events):
    await coupons.lock(admin, "C1", "bob", 3600)

    coupon = await coupons.unlock(admin, "C1", "bob", None)

    assert (coupon.status, coupon.locked) == ("assigned", False)
    assert await redis.exists("cb:{book:1}:lock:C1") == 0
    assert await redis.zscore("cb:{book:1}:locks", "C1") is None
    assert (await events(bobs_code.id))[-1].items() >= {
        "type": "unlocked", "code": "C1", "user": "bob", "v": "3", "forced": "1"}.items()


async def test_only_an_operator_may_leave_the_token_out(bobs_code, coupons, writer, admin,
                                                        redis):
    lock, _ = await coupons.lock(writer, "C1", "bob", None)

    with pytest.raises(errors.Forbidden):
        await coupons.unlock(writer, "C1", "bob", None)
    with pytest.raises(errors.CodeLocked):  # a token given must be the lock's, also for them
        await coupons.unlock(admin, "C1", "bob", "not-the-token")
    assert await redis.get("cb:{book:1}:lock:C1") == lock.lockToken
    await coupons.unlock(admin, "C1", "bob", None)
    with pytest.raises(errors.NotLocked):
        await coupons.unlock(admin, "C1", "bob", None)


# --- redeem ------------------------------------------------------------------


async def test_redeem_without_a_lock(bobs_code, coupons, writer, redis, events):
    redemption, replayed = await coupons.redeem(writer, "C1", "bob", None, None)

    assert replayed is False
    assert (redemption.code, redemption.assignedTo, redemption.timesRedeemed) == ("C1", "bob", 1)
    assert redemption.redemptionsLeft == 0
    raw = await redis.hget("cb:{book:1}:assigned", "C1")
    assert re.fullmatch(rf"bob\|\d{{13}}\|1\|{ms(redemption.redeemedAt)}\|2", raw)
    assert await redis.hget("cb:{book:1}:meta", "redeemed") == "1"
    assert await redis.hget("cb:{book:1}:meta", "updatedAt") == str(ms(redemption.redeemedAt))
    assert (await events(bobs_code.id))[-1].items() >= {
        "type": "redeemed", "code": "C1", "user": "bob", "times": "1", "v": "2"}.items()


async def test_redeem_of_a_locked_code_needs_its_token(bobs_code, coupons, writer, redis):
    lock, _ = await coupons.lock(writer, "C1", "bob", None)

    for token in (None, "not-the-token"):
        with pytest.raises(errors.CodeLocked):
            await coupons.redeem(writer, "C1", "bob", token, None)
    assert await redis.hget("cb:{book:1}:meta", "redeemed") == "0"

    redemption, _ = await coupons.redeem(writer, "C1", "bob", lock.lockToken, None)

    assert redemption.timesRedeemed == 1
    assert await redis.exists("cb:{book:1}:lock:C1") == 0
    assert await redis.zscore("cb:{book:1}:locks", "C1") is None


async def test_redeem_refusals(bobs_code, coupons, writer, alice):
    with pytest.raises(errors.CodeNotAssigned):
        await coupons.redeem(writer, "C1", "carol", None, None)
    with pytest.raises(errors.CodeNotAssigned):
        await coupons.redeem(writer, "C2", "bob", None, None)
    with pytest.raises(errors.CodeNotFound):
        await coupons.redeem(alice, "C1", "alice", None, None)
    with pytest.raises(errors.CodeNotFound):
        await coupons.redeem(writer, "NOPE", "bob", None, None)


async def test_single_use_code_redeems_once(bobs_code, coupons, writer, redis, events):
    await coupons.redeem(writer, "C1", "bob", None, None)

    with pytest.raises(errors.CodeRedeemed):
        await coupons.redeem(writer, "C1", "bob", None, None)

    assert await redis.hget("cb:{book:1}:meta", "redeemed") == "1"
    assert sum(e["type"] == "redeemed" for e in await events(bobs_code.id)) == 1


async def test_limited_multiple_redemptions(make_book, coupons, writer, redis, events):
    book = await make_book(["M1"], multipleRedeemsAllowed=True, maxRedeemsPerCode=3)
    await coupons.assign_code(writer, "M1", "bob", None, None)

    results = [(await coupons.redeem(writer, "M1", "bob", None, None))[0] for _ in range(3)]
    with pytest.raises(errors.CodeRedeemed):
        await coupons.redeem(writer, "M1", "bob", None, None)

    assert [(r.timesRedeemed, r.redemptionsLeft) for r in results] == [(1, 2), (2, 1), (3, 0)]
    assert await redis.hget("cb:{book:1}:meta", "redeemed") == "3"
    redeemed = [e for e in await events(book.id) if e["type"] == "redeemed"]
    assert [e["times"] for e in redeemed] == ["1", "2", "3"]


async def test_unlimited_redemptions(make_book, coupons, writer, redis):
    await make_book(["U1"], multipleRedeemsAllowed=True)
    await coupons.assign_code(writer, "U1", "bob", None, None)

    results = [(await coupons.redeem(writer, "U1", "bob", None, None))[0] for _ in range(5)]

    assert [(r.timesRedeemed, r.redemptionsLeft) for r in results] == [
        (n, None) for n in range(1, 6)]
    assert await redis.hget("cb:{book:1}:meta", "redeemed") == "5"
    # Still lockable: it never runs out.
    assert (await coupons.lock(writer, "U1", "bob", None))[0].code == "U1"


# --- versions ----------------------------------------------------------------


async def test_each_change_of_a_code_adds_exactly_one_to_its_version(make_book, coupons, writer,
                                                                     redis, events):
    book = await make_book(["V1", "OTHER"], multipleRedeemsAllowed=True)
    versions: list[int] = []

    async def version() -> int:
        raw = await redis.hget("cb:{book:1}:assigned", "V1")
        return int(raw.rsplit("|", 1)[1])

    await coupons.assign_code(writer, "V1", "bob", None, None)
    versions.append(await version())
    lock, _ = await coupons.lock(writer, "V1", "bob", None)
    versions.append(await version())
    await coupons.unlock(writer, "V1", "bob", lock.lockToken)
    versions.append(await version())
    await coupons.redeem(writer, "V1", "bob", None, None)
    versions.append(await version())
    lock, _ = await coupons.lock(writer, "V1", "bob", None)
    versions.append(await version())
    await coupons.redeem(writer, "V1", "bob", lock.lockToken, None)
    versions.append(await version())
    # Neither a repeated assignment nor a refused request is a change.
    await coupons.assign_code(writer, "V1", "bob", None, None)
    with pytest.raises(errors.NotLocked):
        await coupons.unlock(writer, "V1", "bob", lock.lockToken)
    await coupons.assign_code(writer, "OTHER", "carol", None, None)
    versions.append(await version())

    assert versions == [1, 2, 3, 4, 5, 6, 6]
    mine = [e for e in await events(book.id) if e["code"] == "V1"]
    assert [(e["type"], e["v"]) for e in mine] == [
        ("assigned", "1"), ("locked", "2"), ("unlocked", "3"), ("redeemed", "4"),
        ("locked", "5"), ("redeemed", "6")]



async def test_code_events_carry_the_state_after_the_change(make_book, coupons, writer, redis,
                                                            events):
    book = await make_book(["S1"], multipleRedeemsAllowed=True)

    async def check_last_event(kind: str) -> None:
        last = (await events(book.id))[-1]
        assert last["type"] == kind
        assert state_of(last) == await redis.hget("cb:{book:1}:assigned", "S1")

    await coupons.assign_code(writer, "S1", "bob", None, None)
    await check_last_event("assigned")
    lock, _ = await coupons.lock(writer, "S1", "bob", None)
    await check_last_event("locked")
    await coupons.unlock(writer, "S1", "bob", lock.lockToken)
    await check_last_event("unlocked")
    await coupons.redeem(writer, "S1", "bob", None, None)
    await check_last_event("redeemed")
    await coupons.redeem(writer, "S1", "bob", None, None)
    await check_last_event("redeemed")
    assert (await events(book.id))[-1]["times"] == "2"


async def test_locks_and_redeems_gathered_at_once_each_get_their_own_outcome(
        bobs_code, coupons, writer, redis):
    """Twenty calls in one batch of the pipelining client: each caller gets the
    reply to its own script call (one token, then CodeLocked; one redeem, then
    CodeRedeemed). fakeredis runs scripts one at a time, so this shows no race:
    tests/integration/test_concurrency.py races them on a real server."""
    locks = await asyncio.gather(*(coupons.lock(writer, "C1", "bob", None) for _ in range(20)),
                                 return_exceptions=True)

    winners = [r for r in locks if not isinstance(r, Exception)]
    assert len(winners) == 1
    assert all(isinstance(r, errors.CodeLocked) for r in locks if r not in winners)
    token = winners[0][0].lockToken

    redeems = await asyncio.gather(
        *(coupons.redeem(writer, "C1", "bob", token, None) for _ in range(20)),
        return_exceptions=True)

    assert sum(not isinstance(r, Exception) for r in redeems) == 1
    assert all(isinstance(r, errors.CodeRedeemed) for r in redeems if isinstance(r, Exception))
    assert await redis.hget("cb:{book:1}:meta", "redeemed") == "1"


# --- the code's book, named by the caller ---------------------------------------


async def test_naming_the_codes_book_locks_unlocks_and_redeems_as_without(
        bobs_code, coupons, writer, redis, events):
    """The book given (as the assign answered it) spares the code's look-up;
    the outcome is the same."""
    lock, _ = await coupons.lock(writer, "C1", "bob", None, book_id=bobs_code.id)
    assert lock.couponBookId == bobs_code.id
    assert await redis.get("cb:{book:1}:lock:C1") == lock.lockToken
    unlocked = await coupons.unlock(writer, "C1", "bob", lock.lockToken, book_id=bobs_code.id)
    assert not unlocked.locked
    redemption, _ = await coupons.redeem(writer, "C1", "bob", None, None, book_id=bobs_code.id)
    assert redemption.timesRedeemed == 1
    assert [e["type"] for e in await events(bobs_code.id)][-3:] == \
        ["locked", "unlocked", "redeemed"]


async def test_naming_another_book_is_a_mismatch_and_changes_nothing(
        bobs_code, make_book, coupons, writer, alice, redis, events):
    other = await make_book(["D1"])
    before = await events(bobs_code.id)

    with pytest.raises(errors.BookMismatch):
        await coupons.lock(writer, "C1", "bob", None, book_id=other.id)
    with pytest.raises(errors.BookMismatch):
        await coupons.redeem(writer, "C1", "bob", None, None, book_id=other.id)
    with pytest.raises(errors.BookMismatch):
        await coupons.unlock(writer, "C1", "bob", "token", book_id=other.id)
    # An end user learns no more than from an unknown code.
    await coupons.assign_code(writer, "D1", "alice", None, None)
    with pytest.raises(errors.CodeNotFound):
        await coupons.lock(alice, "D1", "alice", None, book_id=bobs_code.id)

    assert await redis.exists("cb:{book:1}:lock:C1", "cb:{book:2}:lock:D1") == 0
    assert await events(bobs_code.id) == before


async def test_naming_the_right_book_keeps_the_usual_refusals(
        bobs_code, make_book, coupons, writer):
    with pytest.raises(errors.CodeNotAssigned):  # free, in the book named
        await coupons.lock(writer, "C2", "bob", None, book_id=bobs_code.id)
    with pytest.raises(errors.CodeNotAssigned):  # bob's, in the book named
        await coupons.lock(writer, "C1", "carol", None, book_id=bobs_code.id)
    with pytest.raises(errors.CodeNotFound):  # in no book
        await coupons.lock(writer, "NOPE", "bob", None, book_id=bobs_code.id)
    with pytest.raises(errors.BookNotFound):
        await coupons.lock(writer, "C1", "bob", None,
                           book_id="00000000-0000-4000-8000-000000000000")
