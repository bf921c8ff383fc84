"""In cluster mode every script call's keys hash to one slot, and every script gets exercised;
on one Redis the assign scripts also write the user's index of books."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pytest
from redis.crc import key_slot

from couponsvc.books import Books
from couponsvc.coupons import Coupons, Idempotency
from couponsvc.schemas import CreateBook
from couponsvc.scripts import NAMES, Scripts
from couponsvc.settings import Settings
from couponsvc.store import Store
from couponsvc.writer import Writer

pytestmark = pytest.mark.unit


class RecordingScripts(Scripts):
    """Scripts that note the name and keys of every call."""

    def __init__(self, redis: Any) -> None:
        super().__init__(redis)
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Any] = (),
                  pipe: Any = None) -> Any:
        self.calls.append((name, tuple(keys)))
        return await super().run(name, keys, args, pipe)

    async def run_many(self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
                       ) -> list[Any]:
        self.calls.extend((name, tuple(keys)) for keys, _ in calls)
        return await super().run_many(name, calls)


async def exercise(books: Books, coupons: Coupons, writer: Any) -> None:
    """One of every operation, including the optional idempotency key."""
    book = await books.create(CreateBook(name="slots", multipleRedeemsAllowed=True,
                                         initialCouponAmount=3))
    await books.upload(book.id, ["UP-1", "UP-2", "UP-3"])
    await books.generate(book.id, "G-######", 5)
    await books.get(book.id)
    await books.create_once(CreateBook(name="once"), Idempotency("ops", "k0", "fp0"))
    await coupons.assign_random(writer, book.id, "bob", Idempotency("checkout", "k1", "fp1"))
    await coupons.assign_code(writer, "UP-1", "bob", book.id, Idempotency("checkout", "k2", "fp2"))
    lock, _ = await coupons.lock(writer, "UP-1", "bob", None, Idempotency("checkout", "k4", "fp4"))
    await coupons.unlock(writer, "UP-1", "bob", lock.lockToken)
    await coupons.redeem(writer, "UP-1", "bob", None, Idempotency("checkout", "k3", "fp3"))
    await coupons.list_for_user(writer, "bob", None, 10, None)


async def record(redis: Any, writer: Any, cluster: bool) -> list[tuple[str, tuple[str, ...]]]:
    scripts = RecordingScripts(redis)
    await scripts.load()
    store = Store(redis, scripts, Settings(env="dev", key_prefix="shop7", redis_cluster=cluster))
    await exercise(Books(store), Coupons(store), writer)
    # The outbox writer's own script: its sweep of ended locks.
    writer_process = Writer(redis, cast(Any, None), store.keys, scripts=scripts)
    await writer_process.record_expired_locks(store.keys.book(1))
    return scripts.calls


@pytest.fixture
async def recorded(redis, writer):
    return await record(redis, writer, cluster=True)


async def test_every_script_is_exercised(recorded):
    assert {name for name, _ in recorded} == set(NAMES)


async def test_keys_of_each_call_share_one_slot(recorded):
    for name, keys in recorded:
        assert keys, name
        assert len({key_slot(key.encode()) for key in keys}) == 1, (name, keys)
        assert all(key.startswith("shop7:{") for key in keys), (name, keys)


async def test_optional_idempotency_key_shares_the_book_slot(recorded):
    with_idem = [(name, keys) for name, keys in recorded if ":idem:" in keys[-1]]

    assert sorted(name for name, _ in with_idem) == [
        "assign_code", "assign_random", "lock", "redeem"]
    for _, keys in with_idem:
        assert keys[-1].startswith("shop7:{book:1}:idem:")
        assert key_slot(keys[-1].encode()) == key_slot(keys[0].encode())


async def test_every_key_written_carries_the_prefix(recorded, redis):
    stored = await redis.keys("*")

    assert stored
    assert [key for key in stored if not key.startswith("shop7:")] == []


async def test_on_one_redis_the_assign_scripts_also_write_the_users_index(redis, writer):
    calls = await record(redis, writer, cluster=False)

    assigns = [keys for name, keys in calls if name.startswith("assign_")]
    assert len(assigns) == 2
    for keys in assigns:
        assert keys[6] == "shop7:{user:bob}:books"
        assert len({key_slot(key.encode()) for key in keys if key != keys[6]}) == 1
    assert await redis.smembers("shop7:{user:bob}:books") == {"1"}
    others = [keys for name, keys in calls if not name.startswith("assign_")]
    assert all(len({key_slot(key.encode()) for key in keys}) == 1 for keys in others)
