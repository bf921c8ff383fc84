"""The coupon state machine: hypothesis draws a sequence of admin and
checkout requests (and the passing of time), sends each through a driver
(model_drivers.py), and checks the answer, the outbox events and, after every
step, the book views and the state in Redis against coupon_model.py.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from redis import Redis

from couponsvc.keys import BookKeys, Keys

from . import model_strategies as draw
from .coupon_model import CouponModel
from .model_drivers import Driver, Result, every_page
from .model_redis import EventLog, check_lock_times, check_redis_state, server_ms
from .model_types import STATUS, BookState, Caller, Expected
from .names import ALPHABET

WRITER = Caller("checkout-backend", acts_for_anyone=True)
LOCK_TTL_SECONDS = 600  # no lock expires by itself during a run: expire_locks ends them
MAX_BOOKS = 4
MAX_CODES = 14  # uploads stop here, so that runs spend their steps on the checkout
GENERATED = rf"[{ALPHABET}]{{5}}"  # what a '#####' pattern gives


class CouponMachine(RuleBasedStateMachine):
    """Subclasses set `redis` and choose the driver (service layer or HTTP)."""

    redis: Redis  # a client on the service's Redis, to read and age its state

    def make_driver(self) -> Driver:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.driver = self.make_driver()
        self.keys = Keys(self.driver.prefix)
        self.outbox = EventLog(self.redis, self.keys)
        self.run = uuid.uuid4().hex[:8].upper()  # in every name this run makes
        # User ids with the punctuation they may hold (also in keys and URL paths).
        self.users = [f"u0-{self.run}", f"u1.{self.run}@mail", f"u2:{self.run}+x"]
        self.model = CouponModel()
        self.serial = 0
        # The last request sent with an Idempotency-Key, to send it again.
        self.last_keyed: tuple[Callable[..., None], tuple[Any, ...]] | None = None

    def teardown(self) -> None:
        self.driver.close()

    # --- choosing arguments from the model's state ------------------------------
    # Codes are chosen by position in the model's order, which does not depend on
    # Redis's random choices (see CouponModel._interchange): the same draws give
    # the same run, as hypothesis requires.

    def _book(self, index: int) -> str:
        books = list(self.model.books)
        return books[index % len(books)] if index >= 0 else str(uuid.uuid4())

    def _code(self, pick: str, index: int) -> str:
        codes = self.model.codes
        assigned = [c for c, s in codes.items() if s.owner is not None]
        locked = [c for c, s in codes.items() if s.lock_token is not None]
        expired = [c for c, s in codes.items() if s.expired_at is not None]
        choices = {"locked": locked or assigned, "expired": expired or assigned,
                   "assigned": assigned}.get(pick) or list(codes)
        if pick == "ghost" or not choices:
            return f"GHOST{self.run}"
        return choices[index % len(choices)]

    def _user(self, index: int, code: str) -> str:
        """users[index]; for -1 the code's owner, or a user chosen by the code."""
        codes = list(self.model.codes)
        if index >= 0 or code not in codes:
            return self.users[max(index, 0)]
        return self.model.codes[code].owner or self.users[codes.index(code) % len(self.users)]

    def _caller(self, kind: str, user: str) -> Caller:
        if kind == "backend":
            return WRITER
        if kind == "self":
            return Caller(user, acts_for_anyone=False)
        return Caller(next(u for u in self.users if u != user), acts_for_anyone=False)

    def _key(self, kind: str | None) -> str | None:
        if kind == "fresh":
            self.serial += 1
            return f"{self.run}-key-{self.serial}"
        return None if kind is None else f"{self.run}-{kind}"

    def _token(self, kind: str, code: str) -> str | None:
        state = self.model.codes.get(code)
        if kind == "live" and state and state.lock_token:
            return state.lock_token
        if kind in ("live", "stale") and state and state.old_tokens:
            return state.old_tokens[-1]
        return None if kind == "none" else f"bogus-{self.run}"

    def _keys_of(self, book: str) -> BookKeys:
        return self.keys.book(self.outbox.numbers[book])

    def _check(self, result: Result, expected: Expected) -> None:
        """The answer is the expected one, and so are the events it appended."""
        if expected.problem is None:
            assert result.problem is None, f"expected success, got {result.status}: {result.body}"
            assert result.status == 200
            assert result.replayed == expected.replayed, result
            got = {name: result.body.get(name) for name in expected.body}
            assert got == expected.body, f"answer {result.body}, model {expected.body}"
        else:
            assert (result.status, result.problem) == \
                (STATUS[expected.problem], expected.problem), result.body
        self.outbox.check(expected)

    def _check_lock(self, result: Result, code: str, ttl_seconds: int = LOCK_TTL_SECONDS) -> None:
        if code in self.model.codes:
            keys = self._keys_of(self.model.codes[code].book)
            check_lock_times(self.redis, keys, code, result, ttl_seconds * 1000)

    # --- admin rules ---------------------------------------------------------------

    @initialize(max_per_user=draw.MAX_PER_USER, redeems=draw.REDEEMS)
    def first_book(self, max_per_user: int | None, redeems: str) -> None:
        """Every run starts with an open book holding a few codes."""
        self.create_book(max_per_user, redeems, "open", 3)

    @precondition(lambda self: len(self.model.books) < MAX_BOOKS)
    @rule(max_per_user=draw.MAX_PER_USER, redeems=draw.REDEEMS, window=draw.WINDOW,
          initial=draw.INITIAL_CODES)
    def create_book(self, max_per_user: int | None, redeems: str, window: str,
                    initial: int) -> None:
        fields = draw.book_request(f"book {self.run}", max_per_user, redeems, window,
                              LOCK_TTL_SECONDS)
        if initial:
            fields |= {"initialCouponAmount": initial, "codePattern": f"I{self.run}-#####"}
        book = self.driver.create_book(fields)["id"]
        number = self.redis.hget(self.keys.books, book)
        assert number is not None
        self.outbox.numbers[book] = int(number)
        # The generated codes are the new book's free set.
        generated = sorted(str(c) for c in self.redis.smembers(self._keys_of(book).free))
        assert len(generated) == initial
        assert all(re.fullmatch(f"I{self.run}-{GENERATED}", c) for c in generated)
        state = BookState(book, max_per_user, draw.REDEEM_LIMIT[redeems],
                          active=window in draw.ACTIVE_WINDOWS)
        self.outbox.check(self.model.create_book(state, generated))

    @precondition(lambda self: len(self.model.codes) < MAX_CODES)
    @rule(book=draw.BOOK, items=st.lists(draw.UPLOAD_ITEM, min_size=1, max_size=5),
          index=draw.INDEX)
    def upload_codes(self, book: int, items: list[str], index: int) -> None:
        """New codes, with codes of this book, of other books, repeated and malformed."""
        book_id = self._book(book)
        mine = self.model.books[book_id].codes if book_id in self.model.books else []
        others = [c for c, s in self.model.codes.items() if s.book != book_id]
        codes: list[str] = []
        for item in items:
            pool = {"mine": mine, "other": others, "repeat": codes,
                    "invalid": list(draw.INVALID_CODES)}.get(item)
            if pool:
                codes.append(pool[index % len(pool)])
            else:  # upper and lower case, '-' and '_': listings sort them byte-wise
                self.serial += 1
                codes.append(f"C{self.run}-{self.serial}" if self.serial % 2 else
                             f"c_{self.run.lower()}_{self.serial}")
        result = self.driver.upload(book_id, codes)
        expected = self.model.upload(book_id, codes, set(codes) - set(draw.INVALID_CODES))
        if result.problem is None:  # the refused lists are compared in any order
            refused = result.body["refused"]
            result.body["refused"] = {name: sorted(refused[name]) for name in refused}
        self._check(result, expected)

    @precondition(lambda self: len(self.model.codes) < MAX_CODES)
    @rule(book=draw.BOOK.filter(lambda i: i >= 0), count=st.integers(1, 3))
    def generate_codes(self, book: int, count: int) -> None:
        book_id = self._book(book)
        result = self.driver.generate(book_id, f"G{self.run}-#####", count)
        assert result.problem is None, result.body
        generated = result.body["codes"]
        assert len(set(generated)) == count
        assert all(re.fullmatch(f"G{self.run}-{GENERATED}", c) for c in generated)
        assert not set(generated) & set(self.model.codes)
        self._check(result, self.model.generate(book_id, generated))

    # --- checkout rules ------------------------------------------------------------

    @rule(book=draw.BOOK, user=draw.ANY_USER, caller=draw.CALLER, key=draw.KEY)
    def assign_random(self, book: int, user: int, caller: str, key: str | None) -> None:
        user_id = self.users[user]
        self._keyed(self._assign_random, self._caller(caller, user_id), self._book(book),
                    user_id, self._key(key))

    def _assign_random(self, who: Caller, book: str, user: str, key: str | None) -> None:
        result = self.driver.assign_random(who, book, user, key)
        picked = result.body.get("code") if result.problem is None else None
        self._check(result, self.model.assign_random(who, book, user, key, picked))

    @rule(pick=draw.ASSIGN_PICK, index=draw.INDEX, user=draw.USER, caller=draw.CALLER,
          key=draw.KEY, naming=draw.NAMED_BOOK)
    def assign_code(self, pick: str, index: int, user: int, caller: str, key: str | None,
                    naming: str) -> None:
        code = self._code(pick, index)
        user_id = self._user(user, code)
        own = self.model.codes[code].book if code in self.model.codes else None
        book_id = {"none": None, "own": own,
                   "other": next((b for b in self.model.books if b != own),
                                 str(uuid.uuid4()))}[naming]
        self._keyed(self._assign_code, self._caller(caller, user_id), code, user_id, book_id,
                    self._key(key))

    def _assign_code(self, who: Caller, code: str, user: str, book: str | None,
                     key: str | None) -> None:
        result = self.driver.assign_code(who, code, user, book, key)
        self._check(result, self.model.assign_code(who, code, user, book, key))

    @rule(pick=draw.LOCK_PICK, index=draw.INDEX, user=draw.USER, caller=draw.CALLER,
          ttl=draw.LOCK_TTL)
    def lock(self, pick: str, index: int, user: int, caller: str, ttl: int | None) -> None:
        code = self._code(pick, index)
        user_id = self._user(user, code)
        who = self._caller(caller, user_id)
        result = self.driver.lock(who, code, user_id, ttl)
        token = result.body.get("lockToken") if result.problem is None else None
        self._check(result, self.model.lock(who, code, user_id, token))
        self._check_lock(result, code, ttl or LOCK_TTL_SECONDS)

    @rule(pick=draw.UNLOCK_PICK, index=draw.INDEX, user=draw.USER, caller=draw.CALLER,
          token=draw.UNLOCK_TOKEN)
    def unlock(self, pick: str, index: int, user: int, caller: str, token: str) -> None:
        code = self._code(pick, index)
        user_id = self._user(user, code)
        who, lock_token = self._caller(caller, user_id), self._token(token, code)
        assert lock_token is not None
        result = self.driver.unlock(who, code, user_id, lock_token)
        self._check(result, self.model.unlock(who, code, user_id, lock_token))
        self._check_lock(result, code)

    @rule(pick=draw.REDEEM_PICK, index=draw.INDEX, user=draw.USER, caller=draw.CALLER,
          key=draw.KEY, token=draw.REDEEM_TOKEN)
    def redeem(self, pick: str, index: int, user: int, caller: str, key: str | None,
               token: str) -> None:
        code = self._code(pick, index)
        user_id = self._user(user, code)
        self._keyed(self._redeem, self._caller(caller, user_id), code, user_id,
                    self._token(token, code), self._key(key))

    def _redeem(self, who: Caller, code: str, user: str, token: str | None,
                key: str | None) -> None:
        result = self.driver.redeem(who, code, user, token, key)
        self._check(result, self.model.redeem(who, code, user, token, key))
        self._check_lock(result, code)

    def _keyed(self, send: Callable[..., None], *args: Any) -> None:
        """Sends a request; one with an Idempotency-Key (the last argument) is
        remembered for retry_with_the_same_key."""
        if args[-1] is not None:
            self.last_keyed = (send, args)
        send(*args)

    @precondition(lambda self: self.last_keyed is not None)
    @rule()
    def retry_with_the_same_key(self) -> None:
        """The client retries its last request that carried an Idempotency-Key,
        unchanged: a success is replayed, a refusal runs again."""
        assert self.last_keyed is not None
        send, args = self.last_keyed
        send(*args)

    @rule(user=draw.ANY_USER, caller=draw.CALLER, limit=st.integers(1, 4),
          scope=draw.LIST_SCOPE, book=draw.BOOK)
    def list_codes(self, user: int, caller: str, limit: int, scope: str, book: int) -> None:
        user_id = self.users[user]
        who = self._caller(caller, user_id)
        book_id = {"all": None, "book": self._book(max(book, 0)), "unknown": self._book(-1)}[scope]
        result = every_page(self.driver, who, user_id, book_id, limit,
                            max_pages=len(self.model.codes) + 1)
        self._check(result, self.model.list_codes(who, user_id, book_id))

    # --- time passing ----------------------------------------------------------------

    @precondition(lambda self: any(s.lock_token for s in self.model.codes.values()))
    @rule(index=draw.INDEX, every=draw.EVERY_LOCK)
    def expire_locks(self, index: int, every: bool) -> None:
        """Time passes beyond one live lock, or all of them: Redis has dropped
        their keys (SET PX), and their expiries in the books' locks zsets are now
        in the past. Nothing is recorded until a later lock in the book notices."""
        locked = [c for c, s in self.model.codes.items() if s.lock_token]
        at = server_ms(self.redis) - 1
        for code in locked if every else [locked[index % len(locked)]]:
            keys = self._keys_of(self.model.codes[code].book)
            self.redis.delete(keys.lock(code))
            assert self.redis.zadd(keys.locks, {code: at}, xx=True, ch=True) == 1
            self.model.expire_lock(code, at)

    def _closable_books(self) -> list[str]:
        return [b for b, s in self.model.books.items()
                if s.active and any(self.model.codes[c].owner for c in s.codes)]

    @precondition(lambda self: len(self._closable_books()) >= 2)
    @rule(index=draw.INDEX)
    def end_validity(self, index: int) -> None:
        """The validUntil of an open book with assigned codes passes (validFrom, if
        any, is a day ago). Never the last open book: later steps need one."""
        books = self._closable_books()
        book = books[index % len(books)]
        self.redis.hset(self._keys_of(book).meta, "validUntil", server_ms(self.redis) - 1)
        self.model.end_validity(book)

    # --- after every step --------------------------------------------------------------

    @invariant()
    def book_views_match_the_model(self) -> None:
        for book in self.model.books:
            counts = self.driver.book(book)["counts"]
            assert counts == self.model.counts(book), f"book {book}"
            assert counts["available"] + counts["assigned"] == counts["total"]

    @invariant()
    def redis_state_matches_the_model(self) -> None:
        check_redis_state(self.redis, self.keys, self.model, self.outbox.numbers, self.users)
