"""The state-machine test's view of Redis: every key the model can predict,
read in one pipeline and compared with the model (docs/redis-keys.md)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from redis import Redis

from couponsvc.keys import BookKeys, Keys

from .coupon_model import CouponModel
from .model_drivers import Result
from .model_types import Expected


def server_ms(redis: Redis) -> int:
    """Now on the Redis server's clock, the one the scripts use."""
    seconds, micros = redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


class EventLog:
    """Reads what each book's outbox stream gained since the last look."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.numbers: dict[str, int] = {}  # book id -> book number
        self._last: dict[str, str] = {}  # book id -> the last stream id seen

    def check(self, expected: Expected) -> None:
        """Every book's stream gained exactly the expected events (none when refused)."""
        pipe = self.redis.pipeline(transaction=False)
        for book, number in self.numbers.items():
            pipe.xrange(self.keys.book(number).events, f"({self._last.get(book, '0-0')}")
        for book, entries in zip(self.numbers, pipe.execute(), strict=True):
            want = expected.events if book == expected.book else []
            got = [{name: fields.get(name) for name in event}
                   for event, (_, fields) in zip(want, entries, strict=False)]
            assert len(entries) == len(want) and got == want, \
                f"book {book} gained {[f for _, f in entries]}, model expects {want}"
            if entries:
                self._last[book] = entries[-1][0]


def check_redis_state(redis: Redis, keys: Keys, model: CouponModel,
                      numbers: Mapping[str, int], users: Sequence[str]) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.time()
    for book in model.books:
        k = keys.book(numbers[book])
        pipe.smembers(k.free)
        pipe.hgetall(k.assigned)
        pipe.hmget(k.meta, "total", "assigned", "redeemed")
        pipe.zrange(k.locks, 0, -1, withscores=True)
        pipe.xlen(k.events)
        for user in users:
            pipe.zrange(k.user(user), 0, -1)
    for code, state in model.codes.items():
        pipe.get(keys.book(numbers[state.book]).lock(code))
        pipe.hget(keys.directory(code), code)
    replies = iter(pipe.execute())
    seconds, micros = next(replies)
    now = int(seconds) * 1000 + int(micros) // 1000
    for book in model.books:
        _check_book(model, book, users, now, replies)
    for code, state in model.codes.items():
        assert next(replies) == state.lock_token, f"lock key of {code}"
        assert next(replies) == str(numbers[state.book]), f"directory entry of {code}"


def _check_book(model: CouponModel, book: str, users: Sequence[str], now: int,
                replies: Iterator[Any]) -> None:
    state = model.books[book]
    free, assigned, (total, assigned_count, redeemed), locks, events = \
        (next(replies) for _ in range(5))
    held = {user: next(replies) for user in users}

    assert free == set(model.free(book)), f"free set of {book}"
    owners = {code: _parse_assignment(raw) for code, raw in assigned.items()}
    assert not free & set(owners), "a code both free and assigned"
    assert owners == {c: (s.owner, s.times, s.version) for c in state.codes
                      if (s := model.codes[c]).owner is not None}, f"assigned hash of {book}"
    assert int(total) == len(free) + len(owners) == len(state.codes), "free + assigned = total"
    assert int(assigned_count) == len(owners)
    assert int(redeemed) == sum(times for _, times, _ in owners.values())
    if state.redeem_limit is not None:
        assert all(times <= state.redeem_limit for _, times, _ in owners.values())

    # No code in two users' sets; each user's set is what the model gave them.
    holders = Counter(code for codes in held.values() for code in codes)
    assert all(n == 1 for n in holders.values()), f"codes held twice: {holders}"
    assert set(holders) == set(owners)
    for user, codes in held.items():
        assert codes == model.held_by(user, book), f"{user}'s codes in {book}"
        assert all(owners[code][0] == user for code in codes)
        if state.max_per_user is not None:
            assert len(codes) <= state.max_per_user, f"{user} over maxPerUser"

    # Live locks expire in the future; expired ones stay, at the moment they
    # expired, until a lock in the book records them.
    for code, score in locks:
        lock = model.codes[code]
        if lock.lock_token:
            assert score > now, f"{code}'s live lock is in the past"
        else:
            assert score == lock.expired_at, f"{code}'s lock entry is not an expired one"
    assert {code for code, _ in locks} == {
        c for c in state.codes
        if model.codes[c].lock_token or model.codes[c].expired_at is not None
    }, f"locks zset of {book}"
    assert events == state.events, f"outbox length of {book}"


def check_lock_times(redis: Redis, keys: BookKeys, code: str, result: Result,
                     ttl_ms: int) -> None:
    """A granted lock ends when its locks zset entry says, and its key lives
    at most the TTL; a 423 code-locked names the live lock's end and a retry delay."""
    if result.problem is None and "lockToken" in result.body:
        assert 0 < redis.pttl(keys.lock(code)) <= ttl_ms
    elif result.problem == "code-locked":
        assert result.body["retryAfterSeconds"] >= 1
    else:
        return
    until = datetime.fromisoformat(result.body["lockedUntil"])
    assert round(until.timestamp() * 1000) == redis.zscore(keys.locks, code), result.body


def _parse_assignment(raw: str) -> tuple[str, int, int]:
    owner, _at, times, _last, version = raw.split("|")
    return owner, int(times), int(version)
