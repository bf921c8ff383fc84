"""The soak's order of events: start the stack, measure the peak of the
checkout mix, load a book big enough, drive the mix at a share of that peak
for the whole run while watching memory and the writer's lag, let the writer
catch up, compare Redis with Postgres (`couponsvc verify`), write the results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soakreport
from machine import describe
from phases import Bench, Sizes
from service import Api, Outbox, failure_recorded, rewrite_aof
from soakflow import DEFAULT_SHARES, requests_per_session
from soakwatch import Watch
from stack import VENV_BIN, Stack
from suite import _versions

FLOW = Path(__file__).resolve().parent / "soakflow.py"
PEAK_SESSIONS_PER_S = 3000  # more than one API process can do: codes for the peak phase
PEAK_RUNS = 2


def run_soak(args: argparse.Namespace) -> int:
    seconds = args.minutes * 60
    warmup = min(args.warmup, seconds / 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="couponsvc-soak-"))
    results: dict = {
        "mode": "quick" if args.quick else "full", "minutes": args.minutes, "notes": [],
        "settings": {"share_of_peak": args.share, "shares": DEFAULT_SHARES,
                     "think_s": args.think, "interval_s": args.interval, "warmup_s": warmup,
                     "peak_seconds": args.peak_seconds, "lag_interval_s": 0.5},
        "target": "a local stack started by bench/soak.py (one API process, the writer "
                  "running)"}
    if warmup < args.warmup:
        results["notes"].append(f"A {args.minutes:g}-minute run: the warm-up is cut to "
                                f"{warmup:g} s (a third of the run).")
    stack = Stack()
    with failure_recorded(results), contextlib.ExitStack() as cleanup:
        cleanup.callback(_clean_up, stack, tmp, args.keep)
        log(f"starting redis-server, PostgreSQL, the writer and the API in {stack.root}")
        stack.start_service()
        api = cleanup.enter_context(contextlib.closing(
            Api(stack.api_url, stack.token(ttl=int(seconds) + 2 * 3600))))
        outbox = cleanup.enter_context(contextlib.closing(Outbox(stack.redis_url)))
        results["machine"] = describe(*_versions(stack, outbox))
        bench = Bench(api=api, sizes=Sizes(), tmp=tmp, tag=f"s{secrets.token_hex(3)}-",
                      stack=stack, outbox=outbox, results=results)
        _soak(bench, args, seconds)
    results.setdefault("machine", describe())
    soakreport.summarize(results)
    soakreport.write(results, out)
    print("\n" + "\n".join(f"{r['verdict']:>4}  {r['what']}: {r['measured']} "
                           f"(goal {r['goal']})" for r in results["goals"]))
    print(f"\nresults in {out}/soak.json, soak.md and soak.png")
    failed = "error" in results
    if args.update_readme and not failed:
        if args.quick:
            print("a --quick run: bench/README.md is left as it is")
        else:
            soakreport.update_readme(results)
    return 1 if failed else 0


def _clean_up(stack: Stack, tmp: Path, keep: bool) -> None:
    stack.close(keep=keep)
    if keep:
        log(f"kept {stack.root} and {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _soak(bench: Bench, args: argparse.Namespace, seconds: float) -> None:
    r, api = bench.results, bench.api
    assert bench.stack is not None and bench.outbox is not None
    bench.book = api.create_book(f"{bench.tag}book")["id"]
    shares = DEFAULT_SHARES
    if args.rate:
        rate = args.rate
        r["peak"] = {"skipped": f"--rate {args.rate:g} given"}
    else:
        rate = args.share * measure_peak(bench, args)
    sessions = rate / requests_per_session(shares)
    r["rate"] = {"requests_per_s": round(rate, 1), "sessions_per_s": round(sessions, 1),
                 "requests_per_session": requests_per_session(shares)}

    need = math.ceil(sessions * seconds * 1.05) + 1000
    available = api.book(bench.book)["counts"]["available"]
    if available < need:
        log(f"generating {need - available:,} more codes (one per session, 5% spare)")
        api.generate(bench.book, need - available)
    r["book"] = {"id": bench.book, "available_at_start": max(available, need)}
    bench.settle(trimmed=True, timeout=300)
    rewrite_aof(bench.outbox.redis)  # start from a compact AOF, as a long-running server would
    bench.quiet()

    log(f"soak: {rate:,.0f} req/s ({sessions:,.0f} checkouts/s) for {args.minutes:g} min, "
        f"a line every {args.interval:g} s")
    meter = bench.meter()
    assert meter is not None
    pids = {"api": bench.stack.procs["api"].pid, "writer": bench.stack.procs["writer"].pid}
    watch = Watch(api, bench.stack.redis_url, pids, interval=args.interval)
    try:
        with watch:
            meter.start()
            flow(bench, "soak", mode="open", seconds=seconds, think=args.think, rate=rate,
                 connections=max(args.connections, math.ceil(rate / 200)),
                 tag=f"{bench.tag}soak-", progress=True)
            r["cpu"] = meter.stop()
            log("load stopped; waiting for the writer to catch up")
            r["after"] = {"catch_up_s": round(bench.outbox.wait_drained(timeout=300), 2)}
    finally:  # what was sampled goes into the results, also when the run broke off
        t0 = r.get("soak", {}).get("start", {}).get("t0_monotonic", watch.started)
        r["memory_series"] = [{**s, "t": round(s.pop("at") - t0, 2)} for s in watch.memory]
        r["lag_series"] = [{**s, "t": round(s.pop("at") - t0, 2)} for s in watch.lag]
    r["after"]["book_counts"] = api.book(bench.book)["counts"]
    if args.verify:
        r["after"]["verify"] = verify(bench)


def measure_peak(bench: Bench, args: argparse.Namespace) -> float:
    """The mix's peak (req/s answered 2xx), closed loop: the lower of PEAK_RUNS
    runs. Single 15-s runs on this shared machine came out 15-17% apart, and
    80% of the higher figure was once more than the machine could serve; the
    lower one errs on the side of a soak that can keep up. Every run's output
    is kept in results["peak_runs"] (a run cut short stays in results["peak"],
    as `flow` left it)."""
    r = bench.results
    api = bench.api
    api.generate(bench.book, math.ceil(PEAK_SESSIONS_PER_S * args.peak_seconds * PEAK_RUNS))
    runs = r.setdefault("peak_runs", [])
    for n in range(1, PEAK_RUNS + 1):
        bench.settle(trimmed=True)
        bench.quiet()
        log(f"peak of the checkout mix ({n} of {PEAK_RUNS}): closed loop, "
            f"{args.connections} connections, {args.peak_seconds:g} s")
        flow(bench, "peak", mode="closed", seconds=args.peak_seconds, think=0.0,
             connections=args.connections, tag=f"{bench.tag}peak{n}-")
        runs.append(r.pop("peak"))
        totals = runs[-1]["totals"]
        log(f"peak {n}: {totals['ok_per_s']:,.0f} req/s ({totals['statuses']})")
        if totals["bad"]:
            r["notes"].append(f"Peak run {n} had answers that were not 2xx: {totals['bad']}.")
    rates = [run["totals"]["ok_per_s"] for run in runs]
    lowest = min(rates)
    if lowest <= 0:
        raise RuntimeError(f"a peak run answered nothing with 2xx ({rates} req/s)")
    r["peak"] = {"totals": runs[rates.index(lowest)]["totals"], "runs_ok_per_s": rates}
    if max(rates) > 1.1 * lowest:
        r["notes"].append("The peak runs differed by more than 10% ("
                          + ", ".join(f"{rate:,.0f}" for rate in rates)
                          + " req/s); the lower one is used.")
    return lowest


def flow(bench: Bench, key: str, *, mode: str, seconds: float, think: float,
         connections: int, tag: str, rate: float = 0.0, progress: bool = False) -> None:
    """Runs bench/soakflow.py in its own process; its start, windows and totals
    go into results[key] (as far as it got, when it fails)."""
    api = bench.api
    host, port = api.url.removeprefix("http://").split(":")
    spec = {"host": host, "port": int(port), "token": api.token, "book": bench.book,
            "tag": tag, "mode": mode, "rate": rate, "seconds": seconds, "think": think,
            "connections": connections, "interval": bench.results["settings"]["interval_s"],
            "shares": DEFAULT_SHARES, "progress": progress}
    spec_path, out_path = bench.tmp / f"{tag}spec.json", bench.tmp / f"{tag}out.jsonl"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.Popen([sys.executable, str(FLOW), str(spec_path), str(out_path)])
    deadline = time.monotonic() + seconds + 120
    try:
        while (code := proc.poll()) is None:
            _check_alive(bench)
            if time.monotonic() > deadline:
                raise RuntimeError("bench/soakflow.py did not finish in time")
            time.sleep(0.5)
    finally:
        if proc.poll() is None:  # an error or Ctrl-C here: stop it by its PID
            proc.kill()
            proc.wait()
        got: dict = {"windows": []}
        lines = out_path.read_text().splitlines() if out_path.exists() else []
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:
                continue  # a line cut short by the kill
            if "t" in item:
                got["windows"].append(item)
            else:
                got.update(item)  # "start", "totals"
        bench.results[key] = got
    if code != 0 or "totals" not in got:
        raise RuntimeError(f"bench/soakflow.py exited with {code} ({len(lines)} lines written)")


def _check_alive(bench: Bench) -> None:
    """A server that exits under load (a crash, the OOM killer) ends the run."""
    assert bench.stack is not None
    for name in ("api", "writer", "redis", "postgres"):
        proc = bench.stack.procs.get(name)
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} under load; its log is "
                               f"in {bench.stack.root} (with --keep)")


def verify(bench: Bench) -> dict:
    """`couponsvc verify`: every difference between Redis and Postgres, once drained."""
    assert bench.stack is not None
    log("comparing Redis with Postgres (couponsvc verify)")
    started = time.monotonic()
    done = subprocess.run([str(VENV_BIN / "couponsvc"), "verify", "--limit", "20"],
                          env=bench.stack.env, capture_output=True, text=True, timeout=1800)
    return {"exit": done.returncode, "seconds": round(time.monotonic() - started, 1),
            "output": (done.stdout + done.stderr)[-3000:]}
