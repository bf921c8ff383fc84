"""A plain-Python model of the coupon rules (README, "The rules"), for the
state-machine test: what each operation must answer, which state it leaves,
and which outbox events it appends.

Operations mirror the service layer's checks in the order the code runs them
(who may act, which book, the idempotency key, then the script's checks), so
the model predicts the exact problem type of every refusal. A refusal changes
nothing and appends no event.
"""

from __future__ import annotations

from typing import Any

from .model_types import VIEW_FIELDS, BookState, Caller, CodeState, Expected, refused

# lock.lua records at most this many of a book's other expired locks per call.
EXPIRED_LOCKS_PER_LOCK = 16


class CouponModel:
    def __init__(self) -> None:
        self.books: dict[str, BookState] = {}  # in creation order, i.e. book number order
        self.codes: dict[str, CodeState] = {}
        self.bound: dict[tuple[str, str], tuple[object, ...]] = {}  # (caller, key) -> request
        self.stored: dict[tuple[str, str], dict[str, Any]] = {}  # (caller, key) -> reply

    # --- reading the model ------------------------------------------------------

    def free(self, book: str) -> list[str]:
        return [c for c in self.books[book].codes if self.codes[c].owner is None]

    def held_by(self, user: str, book: str) -> list[str]:
        return sorted(c for c in self.books[book].codes if self.codes[c].owner == user)

    def exhausted(self, state: CodeState) -> bool:
        limit = self.books[state.book].redeem_limit
        return limit is not None and state.times >= limit

    def view(self, code: str) -> dict[str, Any]:
        """A coupon's VIEW_FIELDS."""
        state = self.codes[code]
        status = "redeemed" if self.exhausted(state) else \
            "locked" if state.lock_token else "assigned"
        return dict(zip(VIEW_FIELDS, (code, state.book, state.owner, status,
                                      state.lock_token is not None, state.times), strict=True))

    def listing(self, user: str, book: str | None) -> list[dict[str, Any]]:
        """A user's codes: books in number order, codes in code order."""
        return [self.view(c) for b in self.books if book in (None, b)
                for c in self.held_by(user, b)]

    def list_codes(self, caller: Caller, user: str, book: str | None) -> Expected:
        if not caller.may_act_for(user):
            return refused("forbidden")
        if book is not None and book not in self.books:
            return refused("book-not-found")
        return Expected(body={"coupons": self.listing(user, book)})

    def counts(self, book: str) -> dict[str, int]:
        codes = [self.codes[c] for c in self.books[book].codes]
        return {"total": len(codes), "available": sum(s.owner is None for s in codes),
                "assigned": sum(s.owner is not None for s in codes),
                "locked": sum(s.lock_token is not None for s in codes),
                "redeemed": sum(s.times for s in codes)}

    # --- admin ------------------------------------------------------------------

    def create_book(self, book: BookState, initial_codes: list[str]) -> Expected:
        self.books[book.id] = book
        events = [{"type": "book_created", "code": "", "user": "", "v": "1"}]
        if initial_codes:
            events += self._add_codes(book.id, initial_codes)
        return self._emit(book.id, events)

    def upload(self, book: str, codes: list[str], valid: set[str]) -> Expected:
        """`codes` as sent; `valid` are the well-formed ones."""
        if book not in self.books:
            return refused("book-not-found")
        seen: set[str] = set()
        added: list[str] = []
        duplicates: list[str] = []
        elsewhere: list[str] = []
        invalid: list[str] = []
        for code in codes:
            if code not in valid:
                invalid.append(code)
            elif code in seen:
                duplicates.append(code)
            elif code in self.codes:
                (duplicates if self.codes[code].book == book else elsewhere).append(code)
            else:
                added.append(code)
            seen.add(code)
        expected = self._emit(book, self._add_codes(book, added) if added else [])
        expected.body = {"added": len(added),
                         "refusedCount": len(duplicates) + len(elsewhere) + len(invalid),
                         "refused": {"duplicates": sorted(duplicates),
                                     "inOtherBook": sorted(elsewhere),
                                     "invalid": sorted(invalid)}}
        return expected

    def generate(self, book: str, codes: list[str]) -> Expected:
        expected = self._emit(book, self._add_codes(book, codes))
        expected.body = {"added": len(codes), "refusedCount": 0}
        return expected

    def end_validity(self, book: str) -> None:
        self.books[book].active = False

    # --- checkout ----------------------------------------------------------------

    def assign_random(self, caller: Caller, book: str, user: str, key: str | None,
                      picked: str | None) -> Expected:
        """`picked`: the code the service handed out (SPOP chooses it), if any."""
        if not caller.may_act_for(user):
            return refused("forbidden")
        if book not in self.books:
            return refused("book-not-found")
        request = ("assign_random", book, user)
        if (early := self._idempotency(caller, key, request)) is not None:
            return early
        state = self.books[book]
        if not state.active:
            return refused("book-not-active")
        if state.max_per_user is not None and \
                len(self.held_by(user, book)) >= state.max_per_user:
            return refused("user-limit-reached")
        free = self.free(book)
        if not free:
            return refused("book-exhausted")
        if picked is None:  # the service refused: expect success, change nothing
            return Expected(book=book)
        assert picked in free, f"the service handed out {picked!r}, free are {free}"
        self._interchange(picked, free[0])
        return self._assign(caller, key, picked, user)

    def assign_code(self, caller: Caller, code: str, user: str, book: str | None,
                    key: str | None) -> Expected:
        if not caller.may_act_for(user):
            return refused("forbidden")
        if code not in self.codes:
            return refused("code-not-found")
        request = ("assign_code", code, user, book)
        if (early := self._idempotency(caller, key, request)) is not None:
            return early
        hide = not caller.acts_for_anyone
        state = self.codes[code]
        if book is not None and book != state.book:
            return refused("code-not-found" if hide else "book-mismatch")
        if state.owner not in (None, user):
            return refused("code-not-found" if hide else "code-already-assigned")
        if state.owner == user:  # assigning it again answers the assignment, changes nothing
            expected = Expected(book=state.book, body=self.view(code))
            self._store(caller, key, expected.body)  # a success: a retry replays it
            return expected
        if not self.books[state.book].active:
            return refused("book-not-active")
        cap = self.books[state.book].max_per_user
        if cap is not None and len(self.held_by(user, state.book)) >= cap:
            return refused("user-limit-reached")
        return self._assign(caller, key, code, user)

    def lock(self, caller: Caller, code: str, user: str, token: str | None) -> Expected:
        """`token`: the lock token the service issued, if any."""
        if (early := self._owner_checks(caller, code, user)) is not None:
            return early
        state = self.codes[code]
        if self.exhausted(state):  # said whenever asked, in the window or not
            return refused("code-redeemed")
        if not self.books[state.book].active:
            return refused("book-not-active")
        if state.lock_token is not None:
            return refused("code-locked")
        if token is None:  # the service refused: expect success, change nothing
            return Expected(book=state.book)
        events = []
        # The earlier lock of this code, then up to 16 of the book's other
        # expired locks (oldest first), are recorded as lock_expired first.
        if state.expired_at is not None:
            events.append(self._change(code, "lock_expired"))
        expired = sorted((s.expired_at, c) for c in self.books[state.book].codes
                         if (s := self.codes[c]).expired_at is not None)
        for _, other in expired[:EXPIRED_LOCKS_PER_LOCK]:
            events.append(self._change(other, "lock_expired"))
        state.lock_token = token
        events.append(self._change(code, "locked"))
        expected = self._emit(state.book, events)
        expected.body = {"code": code, "couponBookId": state.book, "assignedTo": user}
        return expected

    def unlock(self, caller: Caller, code: str, user: str, token: str) -> Expected:
        if (early := self._owner_checks(caller, code, user)) is not None:
            return early
        state = self.codes[code]
        if state.lock_token is None:
            return refused("not-locked")
        if token != state.lock_token:
            return refused("code-locked")
        self._release(state)
        expected = self._emit(state.book, [self._change(code, "unlocked")])
        expected.body = self.view(code)
        return expected

    def redeem(self, caller: Caller, code: str, user: str, token: str | None,
               key: str | None) -> Expected:
        if not caller.may_act_for(user):
            return refused("forbidden")
        if code not in self.codes:
            return refused("code-not-found")
        if (early := self._idempotency(caller, key, ("redeem", code, user, token))) is not None:
            return early
        if (early := self._owner_checks(caller, code, user)) is not None:
            return early
        state = self.codes[code]
        if self.exhausted(state):  # said whenever asked (it holds no lock)
            return refused("code-redeemed")
        if not self.books[state.book].active:
            return refused("book-not-active")
        if state.lock_token is not None and token != state.lock_token:
            return refused("code-locked")
        events = []
        if state.lock_token is None and state.expired_at is not None:
            # A lock that ran out and was not yet recorded is recorded first.
            events.append(self._change(code, "lock_expired"))
        self._release(state)
        state.times += 1
        events.append(self._change(code, "redeemed"))
        expected = self._emit(state.book, events)
        limit = self.books[state.book].redeem_limit
        expected.body = {"code": code, "couponBookId": state.book, "assignedTo": user,
                         "timesRedeemed": state.times,
                         "redemptionsLeft": None if limit is None else limit - state.times}
        self._store(caller, key, expected.body)
        return expected

    def expire_lock(self, code: str, at_ms: int) -> None:
        """The lock's time is up: its key is gone, its zset entry now in the past."""
        state = self.codes[code]
        assert state.lock_token is not None
        self._release(state)
        state.expired_at = at_ms

    # --- helpers -----------------------------------------------------------------

    def _owner_checks(self, caller: Caller, code: str, user: str) -> Expected | None:
        if not caller.may_act_for(user):
            return refused("forbidden")
        if code not in self.codes:
            return refused("code-not-found")
        if self.codes[code].owner != user:
            # An end user cannot tell another user's code from an unknown one.
            return refused("code-not-assigned" if caller.acts_for_anyone else "code-not-found")
        return None

    def _idempotency(self, caller: Caller, key: str | None,
                     request: tuple[object, ...]) -> Expected | None:
        """A key is bound to the first request that used it, even one refused
        later; only successes are stored, and replayed without any change."""
        if key is None:
            return None
        if self.bound.setdefault((caller.sub, key), request) != request:
            return refused("idempotency-key-reused")
        stored = self.stored.get((caller.sub, key))
        if stored is None:
            return None
        return Expected(book=str(stored["couponBookId"]), body=stored, replayed=True)

    def _store(self, caller: Caller, key: str | None, body: dict[str, Any]) -> None:
        if key is not None:
            self.stored[(caller.sub, key)] = body

    def _assign(self, caller: Caller, key: str | None, code: str, user: str) -> Expected:
        state = self.codes[code]
        state.owner = user
        expected = self._emit(state.book, [self._change(code, "assigned")])
        expected.body = self.view(code)
        self._store(caller, key, expected.body)
        return expected

    def _interchange(self, picked: str, first: str) -> None:
        """The free codes of a book are alike, so the model lets SPOP's pick take the
        place of the book's first free code. The model's order of codes (which the
        test draws codes from) then does not depend on Redis's random choice, and
        hypothesis sees the same runs for the same draws."""
        book = self.books[self.codes[picked].book]
        order = list(self.codes)
        for codes in (order, book.codes):
            i, j = codes.index(picked), codes.index(first)
            codes[i], codes[j] = first, picked
        self.codes = {code: self.codes[code] for code in order}

    def _release(self, state: CodeState) -> None:
        if state.lock_token is not None:
            state.old_tokens.append(state.lock_token)
        state.lock_token = None

    def _change(self, code: str, kind: str) -> dict[str, str]:
        """A change of one code: its version grows; the event carries its state."""
        state = self.codes[code]
        state.version += 1
        if kind == "lock_expired":
            state.expired_at = None
        assert state.owner is not None
        return {"type": kind, "code": code, "user": state.owner, "v": str(state.version),
                "times": str(state.times)}

    def _add_codes(self, book: str, codes: list[str]) -> list[dict[str, str]]:
        for code in codes:
            self.codes[code] = CodeState(book)
            self.books[book].codes.append(code)
        return [{"type": "codes_added", "code": "", "v": "0", "count": str(len(codes))}]

    def _emit(self, book: str, events: list[dict[str, str]]) -> Expected:
        for event in events:
            event["book"] = book
        self.books[book].events += len(events)
        return Expected(book=book, events=events)
