"""Two comparisons, each in short wrk runs side by side:

- flat cost: random assigns on 10,000-code books against a 5,000,000-code
  book (the main book, topped up through the generate endpoint);
- workers: /healthz and assign with one API worker, then with the API
  restarted with COUPONSVC_WORKERS=2 (local runs only).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

from phases import Bench, peak
from service import rewrite_aof, vacuum_codes

AT_ONCE = 2  # generate requests in flight while topping the main book up


def _combine(runs: list[dict]) -> dict:
    """Several wrk runs of one kind as one: requests and seconds summed."""
    ok = sum(r["ok"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    statuses: dict[str, int] = {}
    for r in runs:
        for status, n in r["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    out = {"ok": ok, "seconds": round(seconds, 3), "rps": round(ok / seconds, 1) if seconds
           else 0.0, "statuses": statuses, "runs": runs}
    cpu = [r.pop("cpu_cores") for r in runs if "cpu_cores" in r]
    if cpu:
        out["cpu_cores"] = {k: round(sum(c.get(k, 0.0) for c in cpu) / len(cpu), 2)
                            for k in cpu[0]}
    return out


def _counts(bench: Bench, book_id: str) -> dict[str, int]:
    return {k: int(v) for k, v in bench.api.book(book_id)["counts"].items()}


def _top_up(bench: Bench, target: int) -> dict:
    """Generates codes into the main book until it holds `target` codes; the
    time it took and, locally, the Redis memory it added. Locally, the AOF is
    rewritten at the end (automatic rewrites are held off during the whole
    run, Bench.hold_aof_rewrites), so the measured runs start compact, and
    the book's free set is let finish growing its table (Outbox.finish_rehash)."""
    need = max(0, target - _counts(bench, bench.book)["total"])
    bench.settle(trimmed=True)
    before = bench.memory()
    redis = bench.outbox.redis if bench.outbox is not None and before else None
    bench.log(f"generating {need:,} codes into the main book ({AT_ONCE} requests at once)")
    started = time.monotonic()
    filled = bench.api.fill(bench.book, need, at_once=AT_ONCE)
    seconds = time.monotonic() - started
    added = filled["added"]
    out: dict = {"codes": added, "seconds": round(seconds, 1),
                 "codes_per_s": round(added / seconds) if seconds else None,
                 "requests_at_once": AT_ONCE, "codes_per_request": 200_000,
                 "retried_503": filled["retried_503"]}
    if filled["retried_503"]:
        bench.results["notes"].append(
            f"Topping the main book up, {filled['retried_503']} generate request(s) of "
            f"{AT_ONCE} in flight were answered 503 (Redis slow to answer) and retried.")
    if redis is not None:
        bench.settle(trimmed=True)
        grown = bench.memory() - before
        out |= {"redis_bytes": grown, "redis_bytes_per_code": round(grown / max(1, added), 1),
                "aof_rewrite": "one after the load"}
        rewrite_aof(redis)
        assert bench.outbox is not None
        out["rehash_calls"] = bench.outbox.finish_rehash(bench.book)
    if bench.stack is not None:
        # Left to autovacuum, it ran during the large-book runs a few seconds
        # later, under the runner's quiet threshold (0.73-0.87x in four runs).
        out["vacuum_s"] = vacuum_codes(bench.stack.database_url)
    bench.log(f"generated {added:,} codes in {seconds:.1f} s")
    return out


def flat_cost(bench: Bench) -> dict:
    """Assign throughput on small books against one large book, in runs
    small, large, large, small, so a drift over the phase weighs on both."""
    s, r = bench.sizes, bench.results
    # Books of `small_book_codes` codes, taken in turn, enough that none is drawn
    # below half its codes: every assign finds between 5,000 and 10,000 free.
    expected = 1.5 * r["throughput"]["assign"]["rps"] * 2 * s.compare_seconds
    count = max(2, math.ceil(expected / (s.small_book_codes / 2)))
    small = [bench.api.create_book(f"{bench.tag}small-{i}")["id"] for i in range(count)]
    with ThreadPoolExecutor(AT_ONCE) as pool:
        list(pool.map(lambda book: bench.api.fill(book, s.small_book_codes, at_once=1), small))
    generated = _top_up(bench, s.large_book_codes)
    large = _counts(bench, bench.book)
    runs: dict[str, list[dict]] = {"small": [], "large": []}
    for i, kind in enumerate(("small", "large", "large", "small")):
        bench.settle()
        books = ",".join(small) if kind == "small" else bench.book
        runs[kind].append(peak(bench, "assign", book=books, seconds=s.compare_seconds,
                               tag=f"{bench.tag}flat{i}-"))
    small_run, large_run = _combine(runs["small"]), _combine(runs["large"])
    small_left = min(_counts(bench, book)["available"] for book in small)
    out = {
        "small": small_run | {"books": count, "codes_per_book": s.small_book_codes,
                              "fewest_free_after": small_left},
        "large": large_run | {"books": 1, "codes": large["total"],
                              "free_at_start": large["available"]},
        "generated": generated,
        "ratio": round(large_run["rps"] / small_run["rps"], 3) if small_run["rps"] else None,
    }
    if small_left < s.small_book_codes // 2:
        r["notes"].append(f"Flat cost: a {s.small_book_codes:,}-code book was drawn down to "
                          f"{small_left:,} free codes (more assigns than planned).")
    bench.log(f"flat cost: {large_run['rps']:,.0f} req/s on {large['total']:,} codes vs "
              f"{small_run['rps']:,.0f} on {count} books of {s.small_book_codes:,} "
              f"= {out['ratio']}x")
    return out


def _row(item: dict) -> dict:
    return {"rps": item["rps"], "seconds": item["seconds"], "statuses": item["statuses"],
            "api_cores": item.get("cpu_cores", {}).get("api")}


def workers(bench: Bench, one_worker_assign: dict) -> dict:
    """/healthz and assign peaks with one API worker and with two. The
    one-worker assign is the flat-cost phase's large-book figure (the same
    book, just measured, and as long as the two-worker assign run); the API
    is then restarted with two workers (and left so: this is the last phase)."""
    if bench.stack is None:
        return {"skipped": "needs to restart the API with COUPONSVC_WORKERS (local run only)"}
    seconds = {"healthz": bench.sizes.compare_seconds, "assign": 2 * bench.sizes.compare_seconds}
    cpu: dict[str, dict] = {}
    rows: dict[str, dict] = {"1": {"assign": _row(one_worker_assign)}}
    healthz = peak(bench, "healthz", seconds=seconds["healthz"])
    rows["1"]["healthz"] = _row(healthz)
    cpu["healthz, 1 worker"] = healthz.get("cpu_cores", {})
    bench.log("restarting the API with COUPONSVC_WORKERS=2")
    bench.stack.start_api(workers=2)
    rows["2"] = {}
    for mode in ("healthz", "assign"):
        bench.settle()
        item = peak(bench, mode, seconds=seconds[mode], tag=f"{bench.tag}w2-")
        rows["2"][mode] = _row(item)
        cpu[f"{mode}, 2 workers"] = item.get("cpu_cores", {})
    out: dict = {"workers": rows, "cpu_cores": {k: v for k, v in cpu.items() if v}}
    for mode in ("healthz", "assign"):
        base = rows["1"][mode]["rps"]
        out[f"{mode}_ratio"] = round(rows["2"][mode]["rps"] / base, 3) if base else None
    bench.log(f"workers: 2 / 1 = {out['healthz_ratio']}x on /healthz, "
              f"{out['assign_ratio']}x on assign")
    return out
