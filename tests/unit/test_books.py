"""Books: create_book, claim_codes and add_codes through Books.create/upload/generate."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from couponsvc import books as books_module
from couponsvc import errors
from couponsvc.books import Books
from couponsvc.codes import ALPHABET
from couponsvc.coupons import Idempotency
from couponsvc.keys import Keys
from couponsvc.schemas import CreateBook
from couponsvc.settings import Settings
from couponsvc.store import Store

pytestmark = pytest.mark.unit

CHAR = "[23456789ABCDEFGHJKLMNPQRSTUVWXYZ]"


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def test_create_writes_meta_index_and_event(books, redis, events):
    valid_from = datetime(2020, 1, 1, tzinfo=UTC)
    valid_until = datetime(2099, 1, 1, 12, 30, tzinfo=UTC)
    book = await books.create(CreateBook(
        name="Spring sale", description="10% off", multipleRedeemsAllowed=True,
        maxRedeemsPerCode=3, maxPerUser=2, lockTtlSeconds=60,
        validFrom=valid_from, validUntil=valid_until,
    ))

    assert await redis.hget("cb:books", book.id) == "1"
    meta = await redis.hgetall("cb:{book:1}:meta")
    assert meta.items() >= {
        "id": book.id, "num": "1", "name": "Spring sale", "description": "10% off",
        "multipleRedeemsAllowed": "1", "maxRedeemsPerCode": "3", "maxPerUser": "2",
        "lockTtlMs": "60000", "validFrom": str(ms(valid_from)),
        "validUntil": str(ms(valid_until)), "total": "0", "assigned": "0", "redeemed": "0",
        "updatedAt": meta["createdAt"],
    }.items()
    assert re.fullmatch(r"\d{13}", meta["createdAt"])

    [event] = await events(book.id)
    assert event["type"] == "book_created"
    assert event["book"] == book.id
    assert event["at"] == meta["createdAt"]

    assert (book.name, book.description, book.lockTtlSeconds) == ("Spring sale", "10% off", 60)
    assert book.multipleRedeemsAllowed is True
    assert (book.maxRedeemsPerCode, book.maxPerUser) == (3, 2)
    assert (book.validFrom, book.validUntil) == (valid_from, valid_until)
    assert ms(book.createdAt) == int(meta["createdAt"])
    assert (book.counts.total, book.counts.available, book.counts.assigned) == (0, 0, 0)


async def test_create_leaves_optional_settings_unset(books, redis):
    book = await books.create(CreateBook(name="plain"))

    meta = await redis.hgetall("cb:{book:1}:meta")
    assert {"maxRedeemsPerCode", "maxPerUser", "validFrom", "validUntil"}.isdisjoint(meta)
    assert meta["multipleRedeemsAllowed"] == "0"
    assert meta["lockTtlMs"] == "300000"
    assert (book.maxPerUser, book.maxRedeemsPerCode, book.validFrom, book.validUntil) == (
        None, None, None, None)


async def test_books_get_consecutive_numbers_and_distinct_ids(books, redis):
    first = await books.create(CreateBook(name="one"))
    second = await books.create(CreateBook(name="two"))

    assert first.id != second.id
    assert await redis.hgetall("cb:books") == {first.id: "1", second.id: "2"}
    assert await redis.hget("cb:{book:2}:meta", "name") == "two"
    assert (await books.get(first.id)).name == "one"


async def test_create_with_initial_amount_generates_codes(books, redis, events):
    book = await books.create(
        CreateBook(name="gen", initialCouponAmount=25, codePattern="SALE-####"))

    codes = await redis.smembers("cb:{book:1}:free")
    assert len(codes) == 25
    assert all(re.fullmatch(f"SALE-{CHAR}{{4}}", code) for code in codes)
    assert (book.counts.total, book.counts.available) == (25, 25)
    assert [e["type"] for e in await events(book.id)] == ["book_created", "codes_added"]
    assert (await events(book.id))[1]["count"] == "25"


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"maxRedeemsPerCode": 2}, "maxRedeemsPerCode"),
        ({"validFrom": datetime(2030, 1, 2, tzinfo=UTC),
          "validUntil": datetime(2030, 1, 1, tzinfo=UTC)}, "validUntil"),
        ({"validFrom": datetime(2030, 1, 1, tzinfo=UTC),
          "validUntil": datetime(2030, 1, 1, tzinfo=UTC)}, "validUntil"),
        ({"initialCouponAmount": 11, "codePattern": "X-##"}, "codePattern"),
        ({"initialCouponAmount": 5, "codePattern": "NOPLACEHOLDER"}, "codePattern"),
    ],
)
async def test_create_refuses_bad_settings_and_writes_nothing(books, redis, fields, field):
    with pytest.raises(errors.InvalidRequest) as caught:
        await books.create(CreateBook(name="bad", **fields))

    assert caught.value.extra["field"] == field
    assert await redis.keys("*") == []


async def test_get_unknown_book(books):
    with pytest.raises(errors.BookNotFound):
        await books.get("00000000-0000-0000-0000-000000000000")


async def test_create_skips_book_numbers_already_taken(books, redis):
    # Regression: a lost book-seq (evicted, or an older backup restored) made a
    # new book id alias the existing book 1.
    first = await books.create(CreateBook(name="first"))
    await redis.delete("cb:book-seq")

    second = await books.create(CreateBook(name="second"))

    assert second.name == "second"
    assert await redis.hgetall("cb:books") == {first.id: "1", second.id: "2"}
    assert await redis.hget("cb:{book:1}:meta", "name") == "first"
    assert (await books.get(first.id)).name == "first"


async def test_get_refuses_a_cached_number_that_now_holds_another_book(books, redis):
    """A Redis that lost everything hands the next book the same number; a process
    that still caches the old id's number must answer 404, not the new book."""
    old = await books.create(CreateBook(name="old"))  # number 1, its number now cached
    await redis.flushall()
    new = await books.create(CreateBook(name="new"))
    assert await redis.hgetall("cb:books") == {new.id: "1"}

    with pytest.raises(errors.BookNotFound):
        await books.get(old.id)

    assert (await books.get(new.id)).name == "new"


# --- upload ------------------------------------------------------------------


async def test_upload_sorts_codes_into_added_and_refused(make_book, books, redis):
    book = await make_book()
    too_long = "L" * 65
    result = await books.upload(book.id, [
        "A1", "b_2-X", "A1", "bad code", too_long, "", 7, None, "é", "L" * 64,
    ])

    assert result.added == 3
    assert result.refused.duplicates == ["A1"]
    assert result.refused.inOtherBook == []
    assert result.refused.invalid == ["bad code", too_long, "", "7", "None", "é"]
    assert result.refusedCount == 7
    assert result.codes is None
    assert await redis.smembers("cb:{book:1}:free") == {"A1", "b_2-X", "L" * 64}
    assert await redis.hget("cb:{book:1}:meta", "total") == "3"


async def test_upload_of_codes_already_in_the_book_refuses_them(make_book, books, coupons,
                                                                writer, redis):
    book = await make_book(["A1", "A2"])
    await coupons.assign_code(writer, "A1", "bob", None, None)

    result = await books.upload(book.id, ["A1", "A2", "A3"])

    assert result.added == 1
    assert result.refused.duplicates == ["A1", "A2"]
    # An assigned code is not put back into the free set.
    assert await redis.smembers("cb:{book:1}:free") == {"A2", "A3"}
    assert await redis.hget("cb:{book:1}:meta", "total") == "3"


async def test_upload_refuses_codes_of_another_book(make_book, books, redis):
    await make_book(["SHARED"])
    other = await make_book()

    result = await books.upload(other.id, ["SHARED", "OWN"])

    assert result.added == 1
    assert result.refused.inOtherBook == ["SHARED"]
    assert await redis.smembers("cb:{book:2}:free") == {"OWN"}
    assert await redis.hget("cb:books", other.id) == "2"
    assert (await books.get(other.id)).counts.total == 1


async def test_directory_maps_each_code_to_its_book(make_book, store, redis):
    await make_book(["A1", "A2"])
    await make_book(["B1"])

    for code, number in (("A1", "1"), ("A2", "1"), ("B1", "2")):
        key = store.keys.directory(code)
        assert re.fullmatch(r"cb:\{dir:[0-9a-f]{2}\}:[0-9a-f]{4}", key)
        assert await redis.hget(key, code) == number
    entries = [await redis.hlen(key) for key in await redis.keys("cb:{dir:*")]
    assert sum(entries) == 3


async def test_upload_emits_one_codes_added_event_with_the_count(make_book, books, events):
    book = await make_book()
    await books.upload(book.id, ["A1", "A2", "A3"])
    await books.upload(book.id, ["A1"])  # nothing new: no event

    assert [(e["type"], e.get("count")) for e in await events(book.id)] == [
        ("book_created", None), ("codes_added", "3")]


async def test_upload_to_unknown_book(books):
    with pytest.raises(errors.BookNotFound):
        await books.upload("00000000-0000-0000-0000-000000000000", ["A1"])


async def test_request_size_limit(redis, scripts, make_book):
    limited = Books(Store(redis, scripts, Settings(env="dev", max_upload_codes=3)))
    book = await make_book()

    with pytest.raises(errors.InvalidRequest) as caught:
        await limited.upload(book.id, ["A1", "A2", "A3", "A4"])
    assert caught.value.extra["field"] == "codes"
    with pytest.raises(errors.InvalidRequest) as caught:
        await limited.generate(book.id, "######", 4)
    assert caught.value.extra["field"] == "generate.count"
    with pytest.raises(errors.InvalidRequest):
        await limited.create(CreateBook(name="big", initialCouponAmount=4))

    assert await redis.scard("cb:{book:1}:free") == 0
    assert (await limited.upload(book.id, ["A1", "A2", "A3"])).added == 3


# --- generate ----------------------------------------------------------------


async def test_generate_adds_new_codes_following_the_pattern(make_book, books, redis, events):
    book = await make_book(["EXISTING"])

    result = await books.generate(book.id, "GEN-######-x", 200)

    assert result.added == 200
    assert result.refusedCount == 0
    assert result.codes is not None and len(set(result.codes)) == 200
    assert all(re.fullmatch(f"GEN-{CHAR}{{6}}-x", code) for code in result.codes)
    # 1,200 random characters: every one of the 32 shows up, and nothing else.
    assert {c for code in result.codes for c in code[4:10]} == set(ALPHABET)
    assert await redis.smembers("cb:{book:1}:free") == {"EXISTING", *result.codes}
    assert await redis.hget("cb:{book:1}:meta", "total") == "201"
    assert (await events(book.id))[-1]["count"] == "200"


async def test_generate_redraws_codes_that_are_taken(make_book, books, redis):
    first, second = await make_book(), await make_book()
    # "##" has 1,024 codes; 10 at a time is allowed, and collisions become likely.
    seen: set[str] = set()
    for book in (first, second) * 8:
        result = await books.generate(book.id, "##", 10)
        assert result.added == 10 and result.codes is not None
        assert seen.isdisjoint(result.codes)
        seen.update(result.codes)

    free = await redis.smembers("cb:{book:1}:free") | await redis.smembers("cb:{book:2}:free")
    assert free == seen and len(seen) == 160


async def test_generate_gives_up_when_the_pattern_is_used_up(make_book, books, redis):
    await make_book([a + b for a in ALPHABET for b in ALPHABET])  # every code of "##"
    book = await make_book()

    with pytest.raises(errors.Conflict):
        await books.generate(book.id, "##", 1)

    assert await redis.hget("cb:{book:2}:meta", "total") == "0"
    assert await redis.scard("cb:{book:2}:free") == 0


def draws_from(codes: list[str]):
    """A stand-in for the random generator: each call draws the first `need`
    of `codes`, so which draws collide is known in advance."""
    def generate(pattern: str, need: int) -> list[str]:
        return codes[:need]
    return generate


async def test_generate_keeps_and_lists_what_it_found_when_the_pattern_runs_short(
        make_book, books, redis, events, monkeypatch):
    taken = [f"T{n}" for n in range(10)]
    await make_book(taken)
    book = await make_book()
    # The first draw finds three unused codes; every later one collides.
    monkeypatch.setattr(books_module.coderules, "generate",
                        draws_from(["N1", "N2", "N3", *taken]))

    result = await books.generate(book.id, "N##", 10)

    assert (result.added, result.shortfall) == (3, 7)
    assert sorted(result.codes or []) == ["N1", "N2", "N3"]
    assert await redis.smembers("cb:{book:2}:free") == {"N1", "N2", "N3"}
    assert await redis.hget("cb:{book:2}:meta", "total") == "3"
    assert [e["count"] for e in await events(book.id) if e["type"] == "codes_added"] == ["3"]


async def test_a_book_whose_initial_codes_run_short_is_still_created(
        make_book, books, redis, monkeypatch):
    """Answering 409 would leave a book the caller never hears of (and would
    create again on a retry): the book is made, and its counts say how many."""
    taken = [f"T{n}" for n in range(10)]
    await make_book(taken)
    monkeypatch.setattr(books_module.coderules, "generate", draws_from(["N1", *taken]))

    book = await books.create(CreateBook(name="short", initialCouponAmount=5,
                                         codePattern="N####"))

    assert (book.counts.total, book.counts.available) == (1, 1)
    assert await redis.smembers("cb:{book:2}:free") == {"N1"}


@pytest.mark.parametrize("pattern, count", [("X-##", 11), ("###", 328), ("NOHASH", 1)])
async def test_generate_refuses_guessable_patterns(make_book, books, redis, pattern, count):
    book = await make_book()

    with pytest.raises(errors.InvalidRequest) as caught:
        await books.generate(book.id, pattern, count)

    assert caught.value.extra["field"] == "generate.pattern"
    assert await redis.hget("cb:{book:1}:meta", "total") == "0"


async def test_book_counts_after_a_mix_of_operations(make_book, books, coupons, writer):
    codes = [f"C{i}" for i in range(10)]
    book = await make_book(codes, multipleRedeemsAllowed=True)
    for code in codes[:4]:
        await coupons.assign_code(writer, code, "bob", None, None)
    await coupons.assign_random(writer, book.id, "carol", None)
    held, _ = await coupons.lock(writer, "C0", "bob", None)
    released, _ = await coupons.lock(writer, "C1", "bob", None)
    await coupons.lock(writer, "C2", "bob", None)
    await coupons.unlock(writer, "C1", "bob", released.lockToken)
    await coupons.redeem(writer, "C0", "bob", held.lockToken, None)
    await coupons.redeem(writer, "C3", "bob", None, None)
    await coupons.redeem(writer, "C3", "bob", None, None)

    counts = (await books.get(book.id)).counts

    assert (counts.total, counts.available, counts.assigned) == (10, 5, 5)
    assert counts.locked == 1  # C2: C1 was unlocked, C0's lock ended with its redemption
    assert counts.redeemed == 3  # redemptions, not codes: C3 counts twice
    assert counts.available + counts.assigned == counts.total


# --- a create with an Idempotency-Key (book_claims.py) -------------------------

MAKER = Idempotency("admin", "book-1", "fp-create")
CLAIM = Keys("cb").idempotency_claim("admin", "book-1")
LEASE = Keys("cb").idempotency_lease("admin", "book-1")
DAY_MS = 24 * 3600 * 1000


async def test_a_create_binds_its_key_to_its_book_and_a_retry_gets_it(books, redis):
    first, replayed = await books.create_once(CreateBook(name="once"), MAKER)
    again, replayed_again = await books.create_once(CreateBook(name="once"), MAKER)

    assert (replayed, replayed_again) == (False, True)
    assert again.id == first.id
    assert await redis.get(CLAIM) == f"fp-create {first.id} made"
    assert DAY_MS - 60_000 < await redis.pttl(CLAIM) <= DAY_MS
    assert await redis.exists(LEASE) == 0
    assert await redis.hlen("cb:books") == 1


async def test_a_key_sent_with_another_request_is_refused(books, redis):
    await books.create_once(CreateBook(name="once"), MAKER)

    with pytest.raises(errors.IdempotencyKeyReused):
        await books.create_once(CreateBook(name="other"), Idempotency("admin", "book-1", "fp-2"))
    assert await redis.hlen("cb:books") == 1


async def test_the_key_names_its_book_from_the_start_and_a_failure_frees_the_lease(
        books, redis, monkeypatch):
    """The retry of a create that failed part-way goes on with the same book."""
    real_hset = redis.hset

    async def index_fails(*_: object) -> None:
        raise RedisConnectionError("connection to Redis lost")

    monkeypatch.setattr(redis, "hset", index_fails)
    with pytest.raises(RedisConnectionError):
        await books.create_once(CreateBook(name="lost"), MAKER)
    held = await redis.get(CLAIM)
    assert held is not None and held.startswith("fp-create ")
    assert DAY_MS - 60_000 < await redis.pttl(CLAIM) <= DAY_MS
    assert await redis.exists(LEASE) == 0  # given up: the retry need not wait

    monkeypatch.setattr(redis, "hset", real_hset)
    book, replayed = await books.create_once(CreateBook(name="lost"), MAKER)

    assert (f"fp-create {book.id}", replayed) == (held, False)
    assert list(await redis.hgetall("cb:books")) == [book.id]
    assert await redis.get(CLAIM) == f"fp-create {book.id} made"


async def test_a_retry_makes_the_initial_codes_a_failed_create_did_not(
        books, redis, monkeypatch):
    real_generate = books._generate

    async def fails_half_way(book, pattern, count, before_round=None):
        await real_generate(book, pattern, count // 2, before_round)
        raise errors.ServiceUnavailable("Postgres did not answer")

    monkeypatch.setattr(books, "_generate", fails_half_way)
    req = CreateBook(name="half", initialCouponAmount=10, codePattern="H-####")
    with pytest.raises(errors.ServiceUnavailable):
        await books.create_once(req, MAKER)
    assert await redis.scard("cb:{book:1}:free") == 5

    monkeypatch.undo()
    book, replayed = await books.create_once(req, MAKER)

    assert not replayed and book.counts.total == book.counts.available == 10
    assert await redis.scard("cb:{book:1}:free") == 10
    assert await redis.hlen("cb:books") == 1


async def test_one_request_at_a_time_makes_a_keys_book(books, redis):
    """Who holds the lease makes the book; a retry meanwhile gets the 409, and
    takes over once the lease lapses (its holder died)."""
    first = await books_module.claim_book_id(books.store, MAKER, "book-a", "token-1")
    with pytest.raises(errors.IdempotencyKeyInProgress):
        await books_module.claim_book_id(books.store, MAKER, "book-b", "token-2")
    assert 0 < await redis.pttl(LEASE) <= 30_000

    await redis.delete(LEASE)  # lapsed
    taken_over = await books_module.claim_book_id(books.store, MAKER, "book-c", "token-3")

    assert first == ("book-a", books_module.Claimed.NEW)
    assert taken_over == ("book-a", books_module.Claimed.RESUME)
    assert await redis.get(LEASE) == "token-3"


async def test_a_create_whose_lease_was_taken_over_stops_before_its_next_step(
        books, redis, monkeypatch):
    """It stalled past its lease and a retry took the work over: it writes no
    more (else the book would get its codes twice), and answers the 409 that
    sends its client to retry."""
    real_number = books._number

    async def stalls(req, book_id, resuming):
        numbered = await real_number(req, book_id, resuming)
        await redis.set(LEASE, "the-retry's-token", px=30_000)
        return numbered

    monkeypatch.setattr(books, "_number", stalls)
    with pytest.raises(errors.IdempotencyKeyInProgress):
        await books.create_once(CreateBook(name="slow", initialCouponAmount=5), MAKER)

    assert await redis.keys("cb:{book:*:meta") == []
    held = await redis.get(CLAIM)
    assert held.startswith("fp-create ") and not held.endswith(" made")
    assert await redis.get(LEASE) == "the-retry's-token"


async def test_a_create_stops_once_a_retry_has_made_its_book(books, redis, monkeypatch):
    """A retry took over, made the book and let the lease go: the stalled
    first request must not take the free lease back and add codes."""
    real_generate = books._generate
    calls = 0

    async def first_stalls_while_the_retry_works(book, pattern, count, before_round=None):
        nonlocal calls
        calls += 1
        if calls > 1:  # the retry's own generation
            return await real_generate(book, pattern, count, before_round)
        await real_generate(book, pattern, count // 2, before_round)
        await redis.delete(LEASE)  # lapsed while this one stalled
        retry, _ = await books.create_once(req, MAKER)
        assert retry.counts.total == 10
        return await real_generate(book, pattern, count - count // 2, before_round)

    req = CreateBook(name="both", initialCouponAmount=10, codePattern="B-####")
    monkeypatch.setattr(books, "_generate", first_stalls_while_the_retry_works)
    with pytest.raises(errors.IdempotencyKeyInProgress):
        await books.create_once(req, MAKER)

    assert await redis.scard("cb:{book:1}:free") == 10
    assert (await redis.get(CLAIM)).endswith(" made")


async def test_a_lease_that_lapsed_with_nobody_taking_it_is_taken_back(
        books, redis, monkeypatch):
    """A create that stalled past its lease while no retry came goes on, and
    marks its book made."""
    real_number = books._number

    async def stalls(req, book_id, resuming):
        numbered = await real_number(req, book_id, resuming)
        await redis.delete(LEASE)  # lapsed
        return numbered

    monkeypatch.setattr(books, "_number", stalls)
    book, replayed = await books.create_once(CreateBook(name="late", initialCouponAmount=3),
                                             MAKER)

    assert not replayed and book.counts.total == 3
    assert await redis.get(CLAIM) == f"fp-create {book.id} made"
    assert await redis.exists(LEASE) == 0


async def test_a_claim_from_before_leases_is_left_to_its_maker(books, redis):
    """An older version kept an unmarked claim for 30 s, renewed by the
    request making the book, and no lease: that request may be at work."""
    await redis.set(CLAIM, "fp-create book-a", px=30_000)

    with pytest.raises(errors.IdempotencyKeyInProgress):
        await books.create_once(CreateBook(name="old"), MAKER)
    assert await redis.get(CLAIM) == "fp-create book-a"
    assert await redis.exists(LEASE) == 0


async def test_a_resume_gives_the_key_a_whole_window_again(books, redis):
    await redis.set(CLAIM, "fp-create book-a", px=3_600_000)

    resumed = await books_module.claim_book_id(books.store, MAKER, "book-b", "token-1")

    assert resumed == ("book-a", books_module.Claimed.RESUME)
    assert DAY_MS - 60_000 < await redis.pttl(CLAIM) <= DAY_MS


@pytest.mark.parametrize("held", ["fp-checkout", "fp-create another-book"])
async def test_marking_made_leaves_a_claim_that_is_not_its_own_alone(books, redis, held):
    """A checkout's claim (a fingerprint alone), or another create's."""
    await redis.set(CLAIM, held)
    lease = books_module.Lease(books.store, MAKER, "book-a", "token-1")

    assert not await lease.settle("made", DAY_MS)
    assert await redis.get(CLAIM) == held


async def test_a_lost_claim_reply_gives_the_lease_up(books, store, redis, monkeypatch):
    """The script ran, its reply never came: retries need not wait 30 s."""
    real_run = store.run

    async def reply_lost(name, keys, args=()):
        reply = await real_run(name, keys, args)
        if name == "claim_create":
            raise RedisConnectionError("connection to Redis lost")
        return reply

    monkeypatch.setattr(store, "run", reply_lost)
    with pytest.raises(RedisConnectionError):
        await books.create_once(CreateBook(name="lost reply"), MAKER)

    assert await redis.exists(LEASE) == 0
    assert (await redis.get(CLAIM)).startswith("fp-create ")


async def test_a_made_book_is_answered_even_if_its_key_cannot_be_marked(
        books, store, redis, monkeypatch):
    """The book is made and durable: failing to mark the key is no reason to
    tell the client otherwise, and the key still names the book."""
    real_run = store.run

    async def marking_fails(name, keys, args=()):
        if name == "settle_create" and args[1] == "made":
            raise RedisConnectionError("connection to Redis lost")
        return await real_run(name, keys, args)

    monkeypatch.setattr(store, "run", marking_fails)
    book, replayed = await books.create_once(CreateBook(name="made"), MAKER)
    monkeypatch.undo()
    await redis.delete(LEASE)  # lapsed
    again, _ = await books.create_once(CreateBook(name="made"), MAKER)

    assert not replayed and again.id == book.id
    assert await redis.hlen("cb:books") == 1
