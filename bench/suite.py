"""The order of the phases, and what each figure is measured against."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import secrets
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import asyncpg
import bulk
import many_books
import report
import scaling
from machine import describe
from phases import QUIET_BUDGET, Bench, Sizes, drain, fixed_rate, hey_check, peak
from service import Api, Outbox, failure_recorded, rewrite_aof, vacuum_codes
from stack import Stack

README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
# /healthz before and after the hot endpoints' peaks differing by more than
# this share of their mean is reported: the ratios are taken against that mean.
HEALTHZ_DRIFT = 0.05


def run_suite(args: argparse.Namespace) -> int:
    started = time.monotonic()
    sizes = Sizes.quick() if args.quick else Sizes()
    out = Path(args.out)
    tmp = out / "tmp" / time.strftime("%Y%m%d-%H%M%S")
    tmp.mkdir(parents=True, exist_ok=True)
    results: dict = {"mode": "quick" if args.quick else "full", "sizes": asdict(sizes),
                     "notes": [], "cpu": {}}
    stack = Stack() if not args.url else None
    outbox = None
    with failure_recorded(results), contextlib.ExitStack() as cleanup:
        if not args.keep:
            cleanup.callback(_remove_tmp, tmp)
        if stack is not None:
            cleanup.callback(stack.close, keep=args.keep)
            print(f"starting redis-server, PostgreSQL, the writer and the API in {stack.root}",
                  flush=True)
            stack.start_service()
            api = cleanup.enter_context(contextlib.closing(Api(stack.api_url, stack.token())))
            outbox = cleanup.enter_context(contextlib.closing(Outbox(stack.redis_url)))
            results["target"] = ("a local stack started by bench/run.py (one API process; "
                                 "two workers in the workers phase)")
        else:
            api = cleanup.enter_context(contextlib.closing(Api(args.url, args.token)))
            results["target"] = args.url
        results["machine"] = describe(*_versions(stack, outbox))
        bench = Bench(api=api, sizes=sizes, tmp=tmp, tag=f"b{secrets.token_hex(3)}-",
                      stack=stack, outbox=outbox, results=results)
        if outbox is not None:
            bench.hold_aof_rewrites()
        _phases(bench)
    results.setdefault("machine", describe())
    results.setdefault("target", args.url or "local")
    results["run_seconds"] = round(time.monotonic() - started)
    results["targets"] = report.targets(results)
    report.write_json(results, out / "latest.json")
    md = report.markdown(results)
    (out / "latest.md").write_text(md)
    report.plots(results, out)
    print("\n" + "\n".join(f"{r['verdict']:>4}  {r['what']}: {r['measured']} "
                           f"(target {r['target']})" for r in results["targets"]))
    print(f"\nresults in {out}/latest.json, latest.md and *.png")
    failed = "error" in results
    if args.update_readme and not failed:
        _update_readme(md)
    return 1 if failed else 0


def _remove_tmp(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(OSError):
        tmp.parent.rmdir()  # bench/results/tmp, when nothing else is kept there


def _versions(stack: Stack | None, outbox: Outbox | None) -> tuple[str, str]:
    if stack is None or outbox is None:
        return "unknown (remote)", "unknown (remote)"
    redis_version = str(outbox.redis.info("server")["redis_version"])

    async def pg() -> str:
        conn = await asyncpg.connect(stack.database_url)
        try:
            version = await conn.fetchval("SHOW server_version")
            return f"{version} (shared_buffers {await conn.fetchval('SHOW shared_buffers')})"
        finally:
            await conn.close()

    return redis_version, asyncio.run(pg())


def _ensure_free(bench: Bench, need: int) -> None:
    """Tops the main book up so a phase of random assigns cannot run dry."""
    available = bench.api.book(bench.book)["counts"]["available"]
    if available < need:
        bench.api.generate(bench.book, need - available + 1000)
        bench.settle()


def _phases(bench: Bench) -> None:
    r = bench.results
    timings: dict[str, float] = {}
    r["phase_seconds"] = timings
    clock = [time.monotonic()]

    def lap(name: str) -> None:
        now = time.monotonic()
        timings[name] = round(now - clock[0], 1)
        clock[0] = now

    _load(bench)
    lap("load")
    bench.pool_book = bench.api.create_book(f"{bench.tag}pool")["id"]
    base, pools = _peaks(bench)
    lap("peaks")
    _latency(bench, base, pools)
    lap("latency")
    if bench.stack is not None:  # it stops and restarts the writer: local only
        _ensure_free(bench, math.ceil(base * bench.sizes.drain_seconds * 1.2))
        r["writer"]["drain"] = drain(bench)
        if "cpu_cores" in r["writer"]["drain"]:
            r["cpu"]["writer drain"] = r["writer"]["drain"].pop("cpu_cores")
    else:
        r["writer"]["drain"] = {"skipped": "needs control of the writer (local run only)"}
    lap("drain")
    r["flat_cost"] = scaling.flat_cost(bench)
    lap("flat cost")
    r["workers"] = scaling.workers(bench, r["flat_cost"]["large"])
    lap("workers")
    r["many_books"] = many_books.many_books(bench)  # last: the books it adds stay
    lap("many books")
    if r["many_books"].get("cpu_cores"):
        r["cpu"]["assign among quiet books"] = r["many_books"].pop("cpu_cores")
    for kind in ("small", "large"):
        if "cpu_cores" in r["flat_cost"][kind]:
            r["cpu"][f"flat cost, {kind} book{'s' if kind == 'small' else ''}"] = \
                r["flat_cost"][kind].pop("cpu_cores")
    for label, used in r["workers"].pop("cpu_cores", {}).items():
        r["cpu"][label] = used
    if bench.stack is None:
        r["notes"].append("Against --url: the workers comparison is skipped (it restarts the "
                          "API with COUPONSVC_WORKERS=2).")
    r["waited_for_quiet_s"] = round(QUIET_BUDGET - bench.quiet_budget, 1)
    if bench.aof_rule is not None:
        r["aof_rewrites_between_phases"] = bench.aof_rewrites_between_phases
    other = max((v.get("other", 0) for v in r["cpu"].values()), default=0)
    if other > 0.2:
        r["notes"].append(f"Other processes used up to {other} cores during a phase (see the "
                          "CPU table): the machine was not quiet, figures may be low.")


def _load(bench: Bench) -> None:
    """The main book: the bulk upload and memory figures (local), or generated codes."""
    r = bench.results
    if bench.stack is not None:
        r["bulk"], r["memory"] = bulk.load(bench)
        assert bench.outbox is not None
        rewrite_aof(bench.outbox.redis)
        r["bulk"]["vacuum_s"] = vacuum_codes(bench.stack.database_url)
        return
    bench.book = bench.api.create_book(f"{bench.tag}main")["id"]
    bench.api.generate(bench.book, 100_000)
    skipped = "skipped against --url: needs the deployment's Redis and Postgres directly"
    r["bulk"], r["memory"] = {"skipped": skipped}, {"skipped": skipped}
    r["notes"].append("Against --url: memory, bulk upload and the writer's drain rate are "
                      "skipped (they need the deployment's Redis, Postgres and writer); the "
                      "writer's lag is read from GET /metrics.")


def _pairs_file(bench: Bench, name: str, chosen: list[tuple[str, str]]) -> Path:
    target = bench.tmp / f"pairs-{name}.txt"
    target.write_text("".join(f"{c} {u}\n" for c, u in chosen))
    return target


def _peaks(bench: Bench) -> tuple[float, dict[str, list[tuple[str, str]]]]:
    """Peak throughput of every endpoint; returns the /healthz rate and the
    (code, user) pairs left for the fixed-rate phases."""
    r, s = bench.results, bench.sizes
    tp: dict = {}
    r["throughput"] = tp
    tp["healthz_first"] = peak(bench, "healthz") | {"label": "GET /healthz (first)"}
    _ensure_free(bench, math.ceil(tp["healthz_first"]["rps"] * s.peak_seconds * 1.2))
    bench.settle()
    tp["assign"] = peak(bench, "assign", sample_lag=True) | {"label": "POST /coupons/assign"}
    r["writer"] = {"lag_at_peak_assign": tp["assign"].pop("lag")}

    # Codes assigned to their own users for the lock and redeem peaks (a phase
    # ends early if its codes run out: its rate is still right).
    each = math.ceil(1.1 * tp["assign"]["rps"] * s.peak_seconds)
    bench.log(f"pre-assigning {2 * each:,} codes to their own users for lock and redeem")
    _, pairs, info = bench.pool("peak", 2 * each)
    r["preassign"] = [info]
    if "redis_bytes_per_assigned_code" in info:
        r["memory"].update(bytes_per_assigned_code=info["redis_bytes_per_assigned_code"],
                           assigned_codes=info["codes"],
                           assigned_note="POST /coupons/assign/{code}, one new user per code, "
                                         "outbox drained and trimmed")
    lock_pairs, redeem_pairs = pairs[:each], pairs[each:]
    bench.settle()
    # Lock and redeem name the code's book (couponBookId), as a checkout that
    # kept the assign's answer does: no look-up of the code first.
    tp["lock"] = peak(bench, "lock", sample_lag=True, until_pairs_used=True,
                      pairs=_pairs_file(bench, "lock", lock_pairs), book=bench.pool_book) \
        | {"label": "POST /coupons/lock/{code}"}
    r["writer"]["lag_at_peak_lock"] = tp["lock"].pop("lag")
    bench.settle(trimmed=True)
    before = bench.memory()
    tp["redeem"] = peak(bench, "redeem", sample_lag=True, until_pairs_used=True,
                        pairs=_pairs_file(bench, "redeem", redeem_pairs), book=bench.pool_book) \
        | {"label": "POST /coupons/redeem/{code}"}
    r["writer"]["lag_at_peak_redeem"] = tp["redeem"].pop("lag")
    if before:
        bench.settle(trimmed=True)
        r["memory"].update(
            bytes_per_redeemed_code=round((bench.memory() - before) / max(1, tp["redeem"]["ok"]),
                                          1),
            redeemed_codes=tp["redeem"]["ok"],
            redeemed_note="over its assigned state, no lock held; outbox trimmed")
    tp["list"] = peak(bench, "list", pairs=_pairs_file(bench, "list", pairs)) \
        | {"label": "GET /users/{userId}/coupons"}
    tp["healthz_last"] = peak(bench, "healthz") | {"label": "GET /healthz (last)"}
    first, last = tp["healthz_first"]["rps"], tp["healthz_last"]["rps"]
    base = (first + last) / 2
    tp["healthz_rps"] = round(base, 1)
    if abs(first - last) > HEALTHZ_DRIFT * base:
        r["notes"].append(
            f"/healthz did {first:,.0f} req/s before the hot endpoints and {last:,.0f} after "
            f"({(last - first) / base:+.0%} of their mean): the machine's speed changed "
            "during the peaks, and each ratio is only as exact as that.")
    for mode in ("assign", "lock", "redeem", "list"):
        tp[mode]["ratio_to_healthz"] = round(tp[mode]["rps"] / base, 3)
    for key, item in tp.items():
        if isinstance(item, dict) and "cpu_cores" in item:
            r["cpu"][f"peak {key}"] = item.pop("cpu_cores")

    # Fresh pairs for lock and redeem at 50% + 80% of their own peaks.
    need = {m: math.ceil(1.3 * tp[m]["rps"] * s.latency_seconds) + 50 for m in ("lock", "redeem")}
    _, fresh, info = bench.pool("fixed", need["lock"] + need["redeem"])
    r["preassign"].append(info)
    return base, {"lock": fresh[:need["lock"]], "redeem": fresh[need["lock"]:],
                  "list": pairs}


def _latency(bench: Bench, base: float, pools: dict[str, list[tuple[str, str]]]) -> None:
    """Latency at 50% and 80% of each endpoint's own peak."""
    r, s = bench.results, bench.sizes
    lat: dict = {}
    r["latency"] = lat
    used = {"lock": 0, "redeem": 0}
    for mode in ("healthz", "assign", "lock", "redeem", "list"):
        lat[mode] = {}
        top = base if mode == "healthz" else r["throughput"][mode]["rps"]
        for share in (50, 80):
            rate = top * share / 100
            chosen = pools.get(mode)
            if mode in used:
                n = math.ceil(rate * s.latency_seconds)
                chosen = pools[mode][used[mode]:used[mode] + n]
                used[mode] += len(chosen)
                if len(chosen) < n:
                    r["notes"].append(f"{mode} at {share}%: only {len(chosen)} of {n} "
                                      "pre-assigned codes were left; the phase ran shorter")
            elif mode == "assign":
                _ensure_free(bench, math.ceil(rate * s.latency_seconds) + 1000)
            bench.settle()
            lat[mode][str(share)] = fixed_rate(bench, mode, rate, pairs=chosen)
            if "cpu_cores" in lat[mode][str(share)]:
                r["cpu"][f"{mode} at {share}%"] = lat[mode][str(share)].pop("cpu_cores")
        if mode == "healthz":
            lat[mode]["hey"] = {str(share): hey_check(bench, base * share / 100)
                                for share in (50, 80)}


def _update_readme(md: str) -> None:
    text = README.read_text()
    if START not in text or END not in text:
        return
    body = md.split("\n", 1)[1]  # without its own title
    body = body.replace("](throughput.png)", "](results/throughput.png)") \
        .replace("](latency.png)", "](results/latency.png)") \
        .replace("](writer_lag.png)", "](results/writer_lag.png)")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(f"{head}{START}\n{body}\n{END}{tail}")
