"""The soak's results: figures against goals, soak.json, soak.md, soak.png,
and the "Soak" section of bench/README.md."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- soak:start -->", "<!-- soak:end -->"
GROWTH_GOAL_PCT = 5.0
STEPS = {"assign": "POST /coupons/assign", "list": "GET /users/{userId}/coupons",
         "lock": "POST /coupons/lock/{code}", "unlock": "POST /coupons/unlock/{code}",
         "redeem": "POST /coupons/redeem/{code}"}


def growth(series: list[dict], key: str, warmup: float, seconds: float) -> dict | None:
    """Memory after warm-up: the median of the first stretch after it (baseline)
    against the median of the last stretch of the run; a stretch is a quarter of
    what follows the warm-up, a minute at most. Also the highest sample and the
    least-squares slope."""
    points = [(s["t"], s[key]) for s in series if warmup <= s["t"] <= seconds and key in s]
    if len(points) < 4:
        return None
    stretch = min(60.0, (seconds - warmup) / 4)
    first = [v for t, v in points if t < warmup + stretch] or [points[0][1]]
    last = [v for t, v in points if t > seconds - stretch] or [points[-1][1]]
    base, end = statistics.median(first), statistics.median(last)
    ts, vs = [t for t, _ in points], [v for _, v in points]
    slope = statistics.linear_regression(ts, vs).slope * 60 if len(set(ts)) > 1 else 0.0
    return {"baseline_mb": round(base, 2), "end_mb": round(end, 2), "max_mb": round(max(vs), 2),
            "growth_pct": round((end / base - 1) * 100, 2) if base else None,
            "max_growth_pct": round((max(vs) / base - 1) * 100, 2) if base else None,
            "slope_mb_per_min": round(slope, 3), "stretch_s": round(stretch, 1),
            "samples": len(points)}


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 4)


def summarize(results: dict) -> None:
    """Adds `summary` and `goals` to the results."""
    soak = results.get("soak", {})
    totals, windows = soak.get("totals", {}), soak.get("windows", [])
    seconds = results["minutes"] * 60
    warmup = results["settings"]["warmup_s"]
    mem = results.get("memory_series", [])
    summary: dict = {"memory": {name: growth(mem, f"{name}_rss_mb", warmup, seconds)
                                for name in ("api", "writer")}}
    summary["memory"]["redis_used_memory"] = growth(mem, "redis_used_memory_mb", warmup, seconds)
    loaded = [s for s in results.get("lag_series", []) if 0 <= s["t"] <= seconds]
    ages = [s["oldest_unacked_s"] for s in loaded if not math.isnan(s["oldest_unacked_s"])]
    backlog = [s["backlog"] for s in loaded if not math.isnan(s["backlog"])]
    summary["lag"] = {"samples": len(loaded),
                      "oldest_unacked_s": {"p50": _pct(ages, 50), "p99": _pct(ages, 99),
                                           "max": _pct(ages, 100)},
                      "backlog_events": {"p50": _pct(backlog, 50), "p99": _pct(backlog, 99),
                                         "max": _pct(backlog, 100)}}
    p99s = [(w["t"], w["latency_ms"]["p99"]) for w in windows if w["latency_ms"]]
    if p99s:
        worst = max(p99s, key=lambda item: item[1])
        summary["p99_over_time_ms"] = {"median_window": _pct([v for _, v in p99s], 50),
                                       "worst_window": worst[1], "worst_window_ends_s": worst[0],
                                       "after_warmup_worst": max((v for t, v in p99s
                                                                  if t > warmup), default=None)}
    summary["aof_rewrites_s"] = aof_rewrites(mem)
    errors = sum(totals.get("bad", {}).values()) if totals else None
    summary["errors"] = errors
    if totals:
        summary["achieved_rps"] = totals["ok_per_s"]  # 2xx answered while the load ran
    results["summary"] = summary
    results["goals"] = _goals(results)


def aof_rewrites(mem: list[dict]) -> list[list[float]] | None:
    """The stretches (first and last sample, s, to within a sample) in which
    Redis was rewriting its AOF; None when the samples do not say."""
    if not any("redis_aof_rewriting" in sample for sample in mem):
        return None
    stretches: list[list[float]] = []
    rewriting = False
    for sample in mem:
        if "redis_aof_rewriting" not in sample:  # Redis did not answer: keep the state
            continue
        now = bool(sample["redis_aof_rewriting"])
        if now and not rewriting:
            stretches.append([sample["t"], sample["t"]])
        elif now:
            stretches[-1][1] = sample["t"]
        rewriting = now
    return [[round(start), round(end)] for start, end in stretches]


def _goals(results: dict) -> list[dict]:
    rows: list[dict] = []

    def row(what: str, measured: str, goal: str, ok: bool | None) -> None:
        verdict = "info" if ok is None else ("PASS" if ok else "FAIL")
        rows.append({"what": what, "measured": measured, "goal": goal, "verdict": verdict})

    s, totals = results["summary"], results.get("soak", {}).get("totals", {})
    if "error" in results:
        row("the run completed", f"stopped early: {results['error']}", "yes", False)
    if s["errors"] is None:
        row("errors (not 2xx, socket errors, timeouts)", "n/a", "0", None)
    else:
        shown = f"{s['errors']:,} of {totals['requests']:,}"
        if totals["bad"]:
            shown += " (" + ", ".join(f"{k}: {v:,}" for k, v in totals["bad"].items()) + ")"
        row("errors (not 2xx, socket errors, timeouts)", shown, "0", s["errors"] == 0)
    for name, label in (("api", "API"), ("writer", "writer")):
        g = s["memory"].get(name)
        if g is None or g["growth_pct"] is None:
            row(f"{label} RSS growth after warm-up", "n/a", f"< {GROWTH_GOAL_PCT:g}%", None)
            continue
        row(f"{label} RSS growth after warm-up",
            f"{g['growth_pct']:+.1f}% ({g['baseline_mb']:.1f} -> {g['end_mb']:.1f} MB; max "
            f"{g['max_mb']:.1f}, {g['slope_mb_per_min']:+.2f} MB/min)",
            f"< {GROWTH_GOAL_PCT:g}%", g["growth_pct"] < GROWTH_GOAL_PCT)
    if totals:
        lat = totals["latency_ms"]
        over = s.get("p99_over_time_ms", {})
        row("latency p50 / p99 / p99.9 over the run", f"{lat.get('p50')} / {lat.get('p99')} / "
            f"{lat.get('p99.9')} ms", "reported (bench: p99 < 20 ms at 80%)", None)
        row(f"p99 per {results['settings']['interval_s']:g}-s window: median / worst",
            f"{over.get('median_window')} / {over.get('worst_window')} ms (worst ends at "
            f"{over.get('worst_window_ends_s')} s)", "reported", None)
        rewrites = s.get("aof_rewrites_s")
        shown = "not recorded" if rewrites is None \
            else ", ".join(f"{a:g}-{b:g} s" for a, b in rewrites) or "none"
        row("Redis AOF rewrites (automatic) during the run", shown, "reported", None)
        asked = results["rate"]["requests_per_s"]
        row("throughput: answered / asked", f"{s['achieved_rps']:,.0f} / {asked:,.0f} req/s",
            "reported", None)
    lag = s["lag"]
    if lag["samples"]:
        o, b = lag["oldest_unacked_s"], lag["backlog_events"]
        row("outbox lag (oldest unacked): p99 / max", f"{o['p99']} / {o['max']} s",
            "reported (bench: p99 < 1 s at peak)", None)
        row("outbox backlog: p99 / max", f"{b['p99']} / {b['max']} events", "reported", None)
    after = results.get("after", {})
    if "catch_up_s" in after:
        row("writer caught up after the load stopped", f"{after['catch_up_s']} s", "reported",
            None)
    if "verify" in after:
        v = after["verify"]
        row("Redis and Postgres agree (couponsvc verify)",
            "no difference" if v["exit"] == 0 else f"exit {v['exit']}: differences",
            "no difference", v["exit"] == 0)
    return rows


# --- files -----------------------------------------------------------------


def write(results: dict, out: Path) -> None:
    (out / "soak.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "soak.md").write_text(markdown(results))
    plot(results, out / "soak.png")


def _bucket(results: dict) -> float:
    seconds, interval = results["minutes"] * 60, results["settings"]["interval_s"]
    if seconds >= 300:
        return 60.0
    return max(interval, round(seconds / 6 / interval) * interval)


def _of_runs(peak: dict) -> str:
    """Which peak runs the rate's peak was the lower of (soaks before 057c250 had one)."""
    rates = peak.get("runs_ok_per_s", [])
    if len(rates) < 2:
        return ""
    return f"; the lower of {len(rates)} runs: " + ", ".join(f"{r:,.0f}" for r in rates)


def markdown(results: dict, title: bool = True) -> str:
    m, st = results["machine"], results["settings"]
    lines = [f"# Soak results ({results['mode']}, {results['minutes']:g} min)", ""] if title \
        else []
    lines += [f"{m['date']}, commit `{m['git_commit'][:12]}`; {m['cores']} cores "
              f"({m['cpu_model']}), {m['memory_gib']} GiB, Python {m['python']}, "
              f"Redis {m['redis']}, PostgreSQL {m['postgres']}. Target: {results['target']}.",
              ""]
    peak, rate = results.get("peak", {}), results.get("rate")
    if rate:
        measured = (f"{peak['totals']['ok_per_s']:,.0f} req/s closed loop, "
                    f"{peak['totals']['connections']} connections, {st['peak_seconds']:g} s"
                    f"{_of_runs(peak)}"
                    if "totals" in peak else peak.get("skipped", "not measured"))
        lines += [f"Load: a checkout per new user (assign, lock, redeem with the lock token; "
                  f"{st['shares']['list']:.0%} also list their codes, "
                  f"{st['shares']['retry']:.0%} unlock and lock again before redeeming, "
                  f"{st['shares']['abandon']:.0%} unlock and leave), open loop at "
                  f"{st['share_of_peak']:.0%} of the mix's peak ({measured}): "
                  f"{rate['requests_per_s']:,.0f} req/s, {rate['sessions_per_s']:,.0f} "
                  f"checkouts/s, for {results['minutes']:g} min; think time "
                  f"{st['think_s']:g} s on average between steps; warm-up {st['warmup_s']:g} s.",
                  ""]
    if "error" in results:
        lines += [f"**The run stopped early:** {results['error']}", ""]
    lines += [f"- {note}" for note in results.get("notes", [])]
    if results.get("notes"):
        lines.append("")
    lines += ["| figure | measured | goal | |", "|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['measured']} | {r['goal']} | {r['verdict']} |"
              for r in results.get("goals", [])]
    windows = results.get("soak", {}).get("windows", [])
    if windows:
        bucket = _bucket(results)
        lines += ["", f"## Over time ({bucket:g}-s stretches)", "",
                  "| until | req/s | worst p50 / p99 of a window, ms | not 2xx | API RSS MB | "
                  "writer RSS MB | Redis used MB | lag max s |",
                  "|---|---|---|---|---|---|---|---|"]
        mem, lag = results.get("memory_series", []), results.get("lag_series", [])
        top = max(w["t"] for w in windows)
        edge = bucket
        while edge - bucket < top:
            ws = [w for w in windows if edge - bucket < w["t"] <= edge and w["latency_ms"]]
            ms = [s for s in mem if edge - bucket < s["t"] <= edge]
            ls = [round(s["oldest_unacked_s"], 3) for s in lag if edge - bucket < s["t"] <= edge
                  and not math.isnan(s["oldest_unacked_s"])]
            done = sum(w["done"] for w in ws)
            span = max(1e-9, min(edge, top) - (edge - bucket))

            def last(key: str, ms: list[dict] = ms) -> str:
                return f"{ms[-1][key]:.1f}" if ms and key in ms[-1] else "-"

            lines.append(
                f"| {min(edge, top):g} s | {done / span:,.0f} | "
                f"{max((w['latency_ms']['p50'] for w in ws), default='-')} / "
                f"{max((w['latency_ms']['p99'] for w in ws), default='-')} | "
                f"{sum(sum(w['bad'].values()) for w in ws)} | {last('api_rss_mb')} | "
                f"{last('writer_rss_mb')} | {last('redis_used_memory_mb')} | "
                f"{max(ls, default='-')} |")
            edge += bucket
    totals = results.get("soak", {}).get("totals")
    if totals:
        lines += ["", "## By endpoint (whole run; ms from the scheduled send)", "",
                  "| endpoint | answers | p50 | p99 | p99.9 | max |", "|---|---|---|---|---|---|"]
        for step, q in totals["by_step"].items():
            lines.append(f"| {STEPS.get(step, step)} | {q['count']:,} | {q.get('p50')} | "
                         f"{q.get('p99')} | {q.get('p99.9')} | {q.get('max')} |")
        sess = totals["sessions"]
        lines += ["", f"Checkouts: {sess['started']:,} started, {sess['finished']:,} finished, "
                      f"{sess['failed']:,} stopped by an error, {sess['cut_at_end']:,} cut off "
                      f"when the load stopped; {totals['reconnects']} reconnections "
                      f"({totals.get('connect_errors', 0)} failed attempts)."]
        counts = results.get("after", {}).get("book_counts")
        if counts:
            lines.append("The book afterwards: " + ", ".join(f"{k} {v:,}" for k, v in
                                                            counts.items()) + ".")
    cpu = results.get("cpu")
    if cpu:
        cols = [c for c in ("api", "redis", "writer", "postgres", "load generator", "bench",
                            "other", "machine") if c in cpu]
        lines += ["", "## CPU (cores used on average during the soak)", "",
                  "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|",
                  "| " + " | ".join(str(cpu[c]) for c in cols) + " |"]
    lines += ["", "![soak](soak.png)", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.unlink(missing_ok=True)  # no stale plot beside new figures
    windows = results.get("soak", {}).get("windows", [])
    if not windows:
        return
    warmup = results["settings"]["warmup_s"] / 60
    interval = results["settings"]["interval_s"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    (lat_ax, rate_ax), (mem_ax, lag_ax) = axes
    ws = [w for w in windows if w["latency_ms"]]
    t = [w["t"] / 60 for w in ws]
    for p, style in (("p50", "-"), ("p99", "-"), ("max", ":")):
        lat_ax.plot(t, [w["latency_ms"][p] for w in ws], style, lw=1, label=p)
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("ms (from the scheduled send)")
    lat_ax.set_title(f"Latency per {interval:g}-s window")
    rate_ax.plot([w["t"] / 60 for w in windows], [w["done"] / interval for w in windows],
                 lw=1, label="answered")
    rate_ax.axhline(results["rate"]["requests_per_s"], color="k", ls="--", lw=1, label="asked")
    bad = [(w["t"] / 60, sum(w["bad"].values())) for w in windows if w["bad"]]
    err_ax = rate_ax.twinx()
    if bad:
        err_ax.bar(*zip(*bad, strict=True), width=interval / 60, color="r", alpha=0.6,
                   label="not 2xx")
    else:
        err_ax.text(0.98, 0.04, "no errors", color="r", ha="right", transform=err_ax.transAxes)
    err_ax.set_ylabel("errors per window", color="r")
    rate_ax.set_ylabel("requests / s")
    rate_ax.set_title("Throughput and errors")
    mem = results.get("memory_series", [])
    for key, label in (("api_rss_mb", "API RSS"), ("writer_rss_mb", "writer RSS")):
        mem_ax.plot([s["t"] / 60 for s in mem], [s[key] for s in mem], lw=1, label=label)
    redis_ax = mem_ax.twinx()
    redis_ax.plot([s["t"] / 60 for s in mem], [s["redis_used_memory_mb"] for s in mem],
                  color="grey", ls="--", lw=1)
    redis_ax.set_ylabel("Redis used_memory, MB (dashed)", color="grey")
    mem_ax.set_ylabel("MB")
    mem_ax.set_ylim(bottom=0)
    mem_ax.set_title("Memory")
    lag = [s for s in results.get("lag_series", []) if not math.isnan(s["oldest_unacked_s"])]
    lag_ax.plot([s["t"] / 60 for s in lag], [s["oldest_unacked_s"] for s in lag], lw=1,
                label="oldest unacked, s")
    backlog_ax = lag_ax.twinx()
    backlog_ax.plot([s["t"] / 60 for s in results.get("lag_series", [])],
                    [s["backlog"] for s in results.get("lag_series", [])], color="grey",
                    lw=0.8, alpha=0.7)
    backlog_ax.set_ylabel("backlog, events (grey)", color="grey")
    lag_ax.set_ylabel("s")
    lag_ax.set_title("Outbox lag")
    for ax in axes.flat:
        ax.axvspan(0, warmup, color="0.9", zorder=0)
        ax.axvline(results["minutes"], color="k", lw=0.8)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[1]:
        ax.set_xlabel("minutes (grey: warm-up; black line: the load stops)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def update_readme(results: dict) -> None:
    text = README.read_text()
    if START not in text or END not in text:
        print(f"bench/README.md has no {START} ... {END}: not updated")
        return
    body = markdown(results, title=False).replace("](soak.png)", "](results/soak.png)") \
        .replace("\n## ", "\n### ")  # under the README's own "## Soak"
    head, rest = text.split(START, 1)
    README.write_text(f"{head}{START}\n{body}\n{END}{rest.split(END, 1)[1]}")
