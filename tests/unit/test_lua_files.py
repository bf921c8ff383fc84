"""The Lua files: documented headers, no keyspace walks, registered and called by SHA."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from couponsvc.scripts import FOREIGN, NAMES, PRELUDE, Scripts, source

pytestmark = pytest.mark.unit

LUA_DIR = Path(__file__).resolve().parents[2] / "lua"
OPERATIONS = sorted(p for p in LUA_DIR.glob("*.lua") if p.stem != PRELUDE)
ALL_FILES = sorted(LUA_DIR.glob("*.lua"))


def header(path: Path) -> str:
    """The comment block the file starts with."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return "\n".join(lines)


def body(path: Path) -> str:
    return "\n".join(line for line in path.read_text().splitlines()
                     if not line.lstrip().startswith("--"))


def test_one_file_per_script():
    assert sorted(p.stem for p in OPERATIONS) == sorted(NAMES)


@pytest.mark.parametrize("path", OPERATIONS, ids=lambda p: p.stem)
def test_header_documents_keys_argv_and_reply(path):
    text = header(path)

    assert "KEYS[1]" in text
    assert "ARGV" in text
    assert "Returns" in text


@pytest.mark.parametrize("path", OPERATIONS, ids=lambda p: p.stem)
def test_every_key_and_argument_used_is_documented(path):
    text = header(path)

    for kind in ("KEYS", "ARGV"):
        for index in set(re.findall(rf"\b{kind}\[(\d+)\]", body(path))):
            assert f"{kind}[{index}]" in text or f"{kind}[{index}.." in text, (kind, index)


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.stem)
def test_no_keyspace_walks(path):
    calls = re.findall(r"redis\.p?call\(\s*['\"](\w+)['\"]", path.read_text())

    assert calls, "every script talks to Redis"
    assert {c.upper() for c in calls}.isdisjoint({"KEYS", "SCAN"})


def test_source_is_prelude_then_operation():
    text = source("lock")

    assert text.startswith((LUA_DIR / "_prelude.lua").read_text())
    assert text.endswith((LUA_DIR / "lock.lua").read_text())


async def test_load_registers_every_script(redis):
    scripts = Scripts(redis)
    await scripts.load()
    shas = [script.sha for script in scripts._scripts.values()]

    assert len(set(shas)) == len(NAMES) + len(FOREIGN)
    assert await redis.script_exists(*shas) == [True] * len(shas)


async def test_scripts_survive_a_flushed_script_cache(redis, scripts):
    await redis.hset("cb:{book:1}:meta", mapping={"id": "b1", "lockTtlMs": 1000})
    await redis.script_flush()

    reply = await scripts.run("read_book", ["cb:{book:1}:meta", "cb:{book:1}:free",
                                            "cb:{book:1}:locks"])
    assert reply[:3] == ["ok", 0, 0]

    await redis.script_flush()
    replies = await scripts.run_many("claim_codes",
                                     [(["cb:{dir:00}:0001"], [1, 2, "X", "Y"]),
                                      (["cb:{dir:00}:0002"], [2, 1, "X"])])
    assert replies == ["nn", "n"]


# --- script replies, called directly -------------------------------------------------


async def test_claim_codes_flags(scripts, redis):
    bucket = ["cb:{dir:00}:0001"]
    assert await scripts.run("claim_codes", bucket, [1, 2, "A", "B"]) == "nn"

    assert await scripts.run("claim_codes", bucket, [1, 2, "A", "C"]) == "sn"
    assert await scripts.run("claim_codes", bucket, [2, 3, "A", "B", "D"]) == "oon"
    assert await redis.hgetall("cb:{dir:00}:0001") == {"A": "1", "B": "1", "C": "1", "D": "2"}


async def test_claim_codes_spans_the_buckets_of_one_tag(scripts, redis):
    buckets = ["cb:{dir:00}:0001", "cb:{dir:00}:0002"]

    assert await scripts.run("claim_codes", buckets, [5, 1, "B", 2, "A", "C"]) == "nnn"
    assert await redis.hgetall(buckets[0]) == {"B": "5"}
    assert await redis.hgetall(buckets[1]) == {"A": "5", "C": "5"}


async def test_create_book_refuses_an_existing_book(scripts, redis):
    keys = ["cb:{book:9}:meta", "cb:{book:9}:events"]
    status, created_at = await scripts.run("create_book", keys, ["id-1", "name", "one"])
    assert status == "ok" and created_at > 0

    assert await scripts.run("create_book", keys, ["id-2", "name", "two"]) == ["exists"]
    assert await redis.hmget("cb:{book:9}:meta", "id", "name") == ["id-1", "one"]
    assert await redis.xlen("cb:{book:9}:events") == 1


async def test_add_codes_flags(scripts, redis):
    keys = ["cb:{book:9}:meta", "cb:{book:9}:free", "cb:{book:9}:assigned", "cb:{book:9}:events"]
    assert await scripts.run("add_codes", keys, ["A"]) == ["book_not_found"]
    await scripts.run("create_book", keys[:1] + keys[3:], ["id-1", "name", "n"])
    await redis.hset("cb:{book:9}:assigned", "GONE", "bob|1|0|0|1")

    assert await scripts.run("add_codes", keys, ["A"]) == ["ok", "a"]
    assert await scripts.run("add_codes", keys, ["B", "A", "GONE"]) == ["ok", "add"]
    assert await redis.smembers("cb:{book:9}:free") == {"A", "B"}
    assert await redis.hget("cb:{book:9}:meta", "total") == "2"


async def test_add_codes_keeps_the_total_exact_when_a_code_repeats(scripts, redis):
    # Callers pass distinct codes; if one did not, `total` still counts the set.
    keys = ["cb:{book:9}:meta", "cb:{book:9}:free", "cb:{book:9}:assigned", "cb:{book:9}:events"]
    await scripts.run("create_book", keys[:1] + keys[3:], ["id-1", "name", "n"])

    await scripts.run("add_codes", keys, ["A", "A", "B"])

    assert await redis.scard("cb:{book:9}:free") == 2
    assert await redis.hget("cb:{book:9}:meta", "total") == "2"


async def test_claim_and_add_take_more_codes_than_one_unpack_holds(scripts, redis):
    # The scripts work in slices of UNPACK_MAX (1,000); Lua's stack holds ~8,000.
    bucket = "cb:{dir:00}:0001"
    codes = [f"C{n:05d}" for n in range(20_000)]
    flags = await scripts.run("claim_codes", [bucket], [3, len(codes), *codes])
    assert flags == "n" * len(codes)
    assert await redis.hlen(bucket) == len(codes)

    keys = ["cb:{book:9}:meta", "cb:{book:9}:free", "cb:{book:9}:assigned", "cb:{book:9}:events"]
    await scripts.run("create_book", keys[:1] + keys[3:], ["id-1", "name", "n"])
    assert await scripts.run("add_codes", keys, codes) == ["ok", "a" * len(codes)]
    assert await redis.scard("cb:{book:9}:free") == len(codes)


@pytest.mark.parametrize(
    "name, keys, args",
    [
        ("read_book", ["meta", "free", "locks"], []),
        ("list_user_codes", ["meta", "user:bob", "assigned", "locks"], ["", 10]),
        ("assign_random", ["meta", "free", "assigned", "user:bob", "locks", "events"],
         ["id-1", "bob", "", ""]),
        # On one Redis, with the user's index of books: a refusal writes nothing there either.
        ("assign_random", ["meta", "free", "assigned", "user:bob", "locks", "events",
                           "user-books:bob"], ["id-1", "bob", "9", ""]),
        ("assign_code", ["meta", "free", "assigned", "user:bob", "locks", "events",
                         "user-books:bob"], ["C", "bob", "", "9", ""]),
        ("lock", ["meta", "assigned", "lock:C", "locks", "events"], ["C", "bob", "t", ""]),
        ("unlock", ["meta", "assigned", "lock:C", "locks", "events"], ["C", "bob", "t"]),
        ("redeem", ["meta", "assigned", "lock:C", "locks", "events"], ["C", "bob", "", ""]),
    ],
)
async def test_scripts_report_a_missing_book(scripts, redis, name, keys, args):
    reply = await scripts.run(name, [f"cb:{{book:9}}:{key}" for key in keys], args)

    assert reply == ["book_not_found"]
    assert await redis.keys("*") == []


async def test_on_one_redis_only_an_assignment_adds_to_the_users_index(scripts, redis):
    k = {name: f"cb:{{book:9}}:{name}" for name in ("meta", "free", "assigned", "locks", "events")}
    index = "cb:{user:bob}:books"
    keys = [k["meta"], k["free"], k["assigned"], "cb:{book:9}:user:bob", k["locks"], k["events"],
            index]
    await scripts.run("create_book", [k["meta"], k["events"]], ["id-1", "name", "n"])

    refused = await scripts.run("assign_random", keys, ["id-1", "bob", "9", ""])
    assert refused == ["book_exhausted"]
    assert await redis.exists(index) == 0

    await scripts.run("add_codes", [k["meta"], k["free"], k["assigned"], k["events"]], ["C1"])
    assigned = await scripts.run("assign_random", keys, ["id-1", "bob", "9", ""])
    assert assigned[0] == "ok"
    assert await redis.smembers(index) == {"9"}
