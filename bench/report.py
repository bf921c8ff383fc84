"""Writes a run's results: latest.json (everything), latest.md (the figures
against their targets) and the PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

HOT = ("assign", "lock", "redeem")
ENDPOINTS = {"healthz": "GET /healthz", "assign": "POST /coupons/assign",
             "lock": "POST /coupons/lock/{code}", "redeem": "POST /coupons/redeem/{code}",
             "list": "GET /users/{userId}/coupons"}


def targets(results: dict) -> list[dict]:
    """One row per target: what, measured, target, PASS/FAIL (or n/a)."""
    rows: list[dict] = []

    def row(what: str, value: float | None, target: str, ok: bool | None, unit: str = "") -> None:
        shown = "n/a" if value is None else f"{value:g}{unit}"
        verdict = "n/a" if ok is None else ("PASS" if ok else "FAIL")
        rows.append({"what": what, "measured": shown, "target": target, "verdict": verdict})

    peak = results.get("throughput", {})
    base = peak.get("healthz_rps")
    for mode in HOT:
        ratio = peak.get(mode, {}).get("ratio_to_healthz")
        row(f"{ENDPOINTS[mode]} throughput / /healthz", ratio, ">= 0.7x",
            None if ratio is None else ratio >= 0.7, "x")
    for mode in (*HOT, "list"):
        for share, limit in (("50", 5.0), ("80", 20.0)):
            lat = results.get("latency", {}).get(mode, {}).get(share, {}).get("latency_ms", {})
            p99 = lat.get("p99")
            row(f"{ENDPOINTS[mode]} p99 at {share}% of peak", p99, f"< {limit:g} ms",
                None if p99 is None else p99 < limit, " ms")
    lag = results.get("writer", {}).get("lag_at_peak_assign", {}).get("oldest_unacked_s", {})
    p99 = lag.get("p99")
    row("writer lag (oldest unacked) p99 at peak assign", p99, "< 1 s",
        None if p99 is None else p99 < 1.0, " s")
    many = results.get("many_books", {})
    lag = many.get("lag_at_peak_assign", {}).get("oldest_unacked_s", {})
    p99 = lag.get("p99")
    row(f"writer lag p99 at peak assign among {many.get('quiet_books', 0):,} quiet books", p99,
        "< 1 s", None if p99 is None else p99 < 1.0, " s")
    ratio = results.get("writer", {}).get("drain", {}).get("ratio")
    row("writer drain rate / API produce rate", ratio, ">= 3x",
        None if ratio is None else ratio >= 3.0, "x")
    ratio = results.get("memory", {}).get("ratio")
    row("Redis bytes per free code / bare SADD", ratio, "<= 1.5x",
        None if ratio is None else ratio <= 1.5, "x")
    ratio = results.get("bulk", {}).get("ratio")
    row("bulk load time (slowest of JSON, text, generate) / COPY into a table like codes",
        ratio, "<= 2x", None if ratio is None else ratio <= 2.0, "x")
    sizes = results.get("sizes", {})
    ratio = results.get("flat_cost", {}).get("ratio")
    row(f"POST /coupons/assign throughput, {sizes.get('large_book_codes', 0):,}-code book / "
        f"{sizes.get('small_book_codes', 0):,}-code books", ratio, ">= 0.9x (within 10%)",
        None if ratio is None else ratio >= 0.9, "x")
    ratio = results.get("workers", {}).get("assign_ratio")
    row("POST /coupons/assign throughput, 2 API workers / 1", ratio,
        "1 and 2 workers reported", None if ratio is None else True, "x")
    del base
    return rows


def write_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# Benchmark results ({results['mode']})", "",
             f"{m['date']}, commit `{m['git_commit'][:12]}`; {m['cores']} cores "
             f"({m['cpu_model']}), {m['memory_gib']} GiB, Python {m['python']}, "
             f"Redis {m['redis']}, PostgreSQL {m['postgres']}; wrk {m['packages']['wrk']}, "
             f"hey {m['packages']['hey']}. Target: {results['target']}.", ""]
    if "error" in results:
        lines += [f"**The run stopped early:** {results['error']}", ""]
    if results.get("phase_seconds"):
        lines += [f"The run took {results.get('run_seconds', '?')} s: " + ", ".join(
            f"{name} {seconds:g} s" for name, seconds in results["phase_seconds"].items())
            + " (the rest: set-up and clean-up).", ""]
    if results.get("notes"):
        lines += [f"- {note}" for note in results["notes"]] + [""]
    lines += ["| figure | measured | target | |", "|---|---|---|---|"]
    for r in results["targets"]:
        lines.append(f"| {r['what']} | {r['measured']} | {r['target']} | {r['verdict']} |")
    peak = results.get("throughput", {})
    if peak:
        lines += ["", "## Peak throughput (wrk, "
                  f"{results['sizes']['threads']} threads, {results['sizes']['connections']} "
                  "connections)", "",
                  "| endpoint | req/s | / healthz | seconds | answers | closed-loop p50 / p99 |",
                  "|---|---|---|---|---|---|"]
        for key, item in peak.items():
            if not isinstance(item, dict):
                continue
            lat = item.get("latency_ms_closed_loop", {})
            lines.append(f"| {item.get('label', key)} | {item['rps']:,.0f} | "
                         f"{item.get('ratio_to_healthz', '')} | {item['seconds']} | "
                         f"{_statuses(item['statuses'])} | "
                         f"{lat.get('p50')} / {lat.get('p99')} ms |")
    lat = results.get("latency", {})
    if lat:
        lines += ["", "## Latency at fixed rates (open loop; ms from the scheduled send)", "",
                  "| endpoint | share of peak | req/s asked / done | p50 | p99 | p99.9 | max | "
                  "p99 from write | answers |", "|---|---|---|---|---|---|---|---|---|"]
        for mode, shares in lat.items():
            for share, item in shares.items():
                if not isinstance(item, dict) or "latency_ms" not in item:
                    continue
                q = item["latency_ms"]
                lines.append(f"| {ENDPOINTS.get(mode, mode)} | {share}% | "
                             f"{item['target_rps']:,.0f} / {item['achieved_rps']:,.0f} | "
                             f"{q.get('p50')} | {q.get('p99')} | {q.get('p99.9')} | "
                             f"{q.get('max')} | "
                             f"{item.get('latency_from_write_ms', {}).get('p99', '')} | "
                             f"{_statuses(item.get('statuses', {}))} |")
    writer = results.get("writer", {})
    if writer:
        lines += ["", "## Writer", ""]
        lag = writer.get("lag_at_peak_assign", {})
        if lag:
            o, b = lag["oldest_unacked_s"], lag["backlog_events"]
            lines.append(f"- During peak assign: oldest unacknowledged event p50 {o['p50']} s, "
                         f"p99 {o['p99']} s, max {o['max']} s; backlog p50 {b['p50']}, "
                         f"p99 {b['p99']}, max {b['max']} events ({lag['samples']} samples).")
        d = writer.get("drain", {})
        if d and "ratio" in d:
            lines.append(f"- Drain: {d['backlog_events']:,} events produced at "
                         f"{d['produce_rps']:,.0f}/s with the writer stopped; drained at "
                         f"{d['drain_events_per_s']:,.0f}/s ({d['drain_s']} s, after "
                         f"{d['writer_start_s']} s of start-up) = {d['ratio']}x "
                         f"({d['ratio_with_start']}x counting start-up).")
        elif d:
            lines.append(f"- Drain: {d.get('skipped')}")
    many = results.get("many_books", {})
    if "quiet_books" in many:
        idle, o = many["writer_cores_idle"], many["lag_at_peak_assign"]["oldest_unacked_s"]
        lines.append(f"- Among {many['quiet_books']:,} quiet books (created in "
                     f"{many['books_created_s']} s; the last phase, on the two-worker API): "
                     f"the writer used {idle['before']} cores idle before them and "
                     f"{idle['with_quiet_books']} with them; at {many['assign_rps']:,.0f} "
                     f"assigns/s on the main book its oldest unacknowledged event was p50 "
                     f"{o['p50']} s, p99 {o['p99']} s, max {o['max']} s (read from Redis).")
    elif many:
        lines.append(f"- Many books: {many.get('skipped') or many.get('error')}")
    mem = results.get("memory", {})
    if mem:
        lines += ["", "## Redis memory", ""]
        if "ratio" in mem:
            lines += [f"- {mem['codes']:,} free codes of {mem['code_length']} characters: "
                      f"{mem['service_bytes_per_code']} bytes each (used_memory delta; free set "
                      f"{mem['free_set_bytes_per_code']}, directory "
                      f"{mem['directory_bytes_per_code']} by MEMORY USAGE) vs "
                      f"{mem['baseline_bytes_per_code']} for a bare SADD into one set "
                      f"= {mem['ratio']}x."]
            for key, label in (("assigned", "assigned"), ("redeemed", "redeemed")):
                if f"bytes_per_{key}_code" in mem:
                    lines.append(f"- Each {label} code adds {mem[f'bytes_per_{key}_code']} "
                                 f"bytes ({mem[f'{key}_codes']:,} codes; "
                                 f"{mem.get(f'{key}_note', '')}).")
        else:
            lines.append(f"- {mem.get('skipped') or mem.get('error')}")
    bulk = results.get("bulk", {})
    if bulk:
        lines += ["", "## Bulk upload", ""]
        if "loads" in bulk:
            lines += _bulk_loads(bulk)
        else:
            lines.append(f"- {bulk.get('skipped') or bulk.get('error')}")
    lines += _flat_cost(results) + _workers(results)
    cpu = results.get("cpu", {})
    if cpu:
        lines += ["", "## CPU (cores used on average during each phase)", "",
                  "| phase | " + " | ".join(_CPU_COLS) + " |",
                  "|---" * (len(_CPU_COLS) + 1) + "|"]
        for phase, used in cpu.items():
            lines.append(f"| {phase} | " + " | ".join(str(used.get(c, "")) for c in _CPU_COLS)
                         + " |")
    lines += ["", "![throughput](throughput.png)", "![latency](latency.png)",
              "![writer lag](writer_lag.png)", ""]
    return "\n".join(lines)


_CPU_COLS = ("api", "redis", "writer", "postgres", "load generator", "bench", "other",
             "machine")


_LOAD_WAYS = {"json": "as one JSON list", "text": "as a text/plain body, one per line",
              "generate": "generated from the pattern ############"}


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 100_000 else f"{n_bytes} bytes"


def _bulk_loads(bulk: dict) -> list[str]:
    base = bulk.get("baselines", {})
    copy = base.get("copy_like_codes_seconds")
    lines = ["| codes loaded | request body | seconds | codes/s | / COPY like codes |",
             "|---|---|---|---|---|"]
    for way, figures in bulk["loads"].items():
        if "seconds" not in figures:
            lines.append(f"| {_LOAD_WAYS.get(way, way)} | | {figures.get('error')} | | |")
            continue
        lines.append(f"| {figures['codes']:,} {_LOAD_WAYS.get(way, way)} | "
                     f"{_size(figures['body_bytes'])} | {figures['seconds']} | "
                     f"{figures['codes_per_s']:,} | {figures.get('ratio', '')}x |")
    if copy is not None:
        sorted_copy, bare = base["copy_like_codes_sorted_seconds"], base["copy_bare_seconds"]
        slowest = max(f["seconds"] for f in bulk["loads"].values() if "seconds" in f)
        lines += ["", f"- COPY of the JSON list's {bulk['codes']:,} (code, book_id) rows, as "
                  f"sent, into a table like codes (its primary key and indexes): {copy} s "
                  "(the target's baseline).",
                  f"- The same rows sorted by code first (sorting not timed): {sorted_copy} s; "
                  f"the slowest load is {round(slowest / sorted_copy, 2)}x that.",
                  f"- The same rows into a bare table with no index: {bare} s; the slowest "
                  f"load is {round(slowest / bare, 2)}x that (the primary key is most of "
                  "the cost of storing a code)."]
    return lines


def _flat_cost(results: dict) -> list[str]:
    flat = results.get("flat_cost", {})
    if not flat:
        return []
    lines = ["", "## Flat cost: random assigns on small books and on a large one", ""]
    if "ratio" not in flat:
        return lines + [f"- {flat.get('skipped') or flat.get('error')}"]
    small, large, made = flat["small"], flat["large"], flat["generated"]
    lines += ["| books | free codes | req/s | seconds | answers |", "|---|---|---|---|---|",
              f"| {small['books']} books of {small['codes_per_book']:,} codes, taken in turn | "
              f"{small['codes_per_book']:,}, at the fewest {small['fewest_free_after']:,} "
              f"at the end | {small['rps']:,.0f} | {small['seconds']} | "
              f"{_statuses(small['statuses'])} |",
              f"| 1 book of {large['codes']:,} codes (the main book) | "
              f"{large['free_at_start']:,} at the start | "
              f"{large['rps']:,.0f} | {large['seconds']} | {_statuses(large['statuses'])} |",
              "", f"- Large / small = {flat['ratio']}x (wrk runs small, large, large, small of "
              f"{results['sizes']['compare_seconds']:g} s each)."]
    line = (f"- Topping the main book up: {made['codes']:,} codes generated through "
            f"POST /coupons/codes ({made['codes_per_request']:,} a request, "
            f"{made['requests_at_once']} at once) in {made['seconds']} s "
            f"({made['codes_per_s'] or 0:,}/s)")
    if "redis_bytes_per_code" in made:
        line += (f"; Redis used_memory +{made['redis_bytes'] / 2**20:,.0f} MiB "
                 f"({made['redis_bytes_per_code']} bytes per code)")
    if made.get("rehash_calls"):
        line += (f"; then {made['rehash_calls']:,} read-only SRANDMEMBER calls let its free "
                 "set finish growing its table")
    return lines + [line + "."]


def _workers(results: dict) -> list[str]:
    found = results.get("workers", {})
    if not found:
        return []
    lines = ["", "## API workers (COUPONSVC_WORKERS)", ""]
    if "workers" not in found:
        return lines + [f"- {found.get('skipped') or found.get('error')}"]
    lines += ["| workers | GET /healthz req/s | POST /coupons/assign req/s | "
              "API cores (healthz / assign) |", "|---|---|---|---|"]
    for n, row in found["workers"].items():
        healthz, assign = row["healthz"], row["assign"]
        lines.append(f"| {n} | {healthz['rps']:,.0f} | {assign['rps']:,.0f} | "
                     f"{healthz['api_cores']} / {assign['api_cores']} |")
    return lines + ["", f"- 2 workers / 1: {found['healthz_ratio']}x on /healthz, "
                    f"{found['assign_ratio']}x on assign. The one-worker assign is the "
                    "flat-cost phase's large-book figure; the load generator, Redis, the "
                    "writer and PostgreSQL share the same "
                    f"{results['machine']['cores']} cores."]


def _statuses(statuses: dict) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in statuses.items()) or "-"


def plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for old in ("throughput.png", "latency.png", "writer_lag.png"):
        (out / old).unlink(missing_ok=True)  # no stale plot beside new figures
    peak = results.get("throughput", {})
    items = [(v.get("label", k), v["rps"]) for k, v in peak.items() if isinstance(v, dict)]
    if items:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels, values = zip(*items, strict=True)
        bars = ax.bar(range(len(values)), values, color=["#888" if "healthz" in lb else "#3a7"
                                                         for lb in labels])
        ax.set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=8)
        base = peak.get("healthz_rps")
        if base:
            ax.axhline(0.7 * base, color="r", ls="--", lw=1, label="0.7 x /healthz (target)")
            ax.legend(fontsize=8)
        for bar, v in zip(bars, values, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:,.0f}", ha="center",
                    va="bottom", fontsize=8)
        ax.set_ylabel("requests / s")
        ax.set_title("Peak throughput, one API process (wrk)")
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=100)
        plt.close(fig)
        made.append("throughput.png")
    lat = results.get("latency", {})
    if lat:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, share, limit in ((axes[0], "50", 5.0), (axes[1], "80", 20.0)):
            modes = [m for m in lat if share in lat[m] and "latency_ms" in lat[m][share]]
            for j, p in enumerate(("p50", "p99", "p99.9")):
                vals = [lat[m][share]["latency_ms"].get(p, math.nan) for m in modes]
                ax.bar([i + (j - 1) * 0.27 for i in range(len(modes))], vals, width=0.27,
                       label=p)
            ax.set_xticks(range(len(modes)), modes, fontsize=8)
            ax.axhline(limit, color="r", ls="--", lw=1, label=f"p99 target {limit:g} ms")
            ax.set_yscale("log")
            ax.set_title(f"at {share}% of each endpoint's peak")
            ax.legend(fontsize=7)
        axes[0].set_ylabel("ms (from the scheduled send)")
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=100)
        plt.close(fig)
        made.append("latency.png")
    writer = results.get("writer", {})
    series = {k: v for k, v in writer.items() if k.startswith("lag_at_peak_")}
    drain = writer.get("drain", {}).get("series")
    if series or drain:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for name, lag in series.items():
            pts = [(s["t"], s["oldest_unacked_s"]) for s in lag.get("series", [])
                   if not math.isnan(s.get("oldest_unacked_s", math.nan))]
            if pts:
                axes[0].plot(*zip(*pts, strict=True), label=name.removeprefix("lag_at_peak_"),
                             lw=1)
        axes[0].axhline(1.0, color="r", ls="--", lw=1, label="1 s target (p99)")
        axes[0].set_xlabel("s into the peak phase")
        axes[0].set_ylabel("oldest unacknowledged event, s")
        axes[0].set_title("Writer lag under peak load")
        axes[0].legend(fontsize=7)
        if drain:
            axes[1].plot(*zip(*drain, strict=True), lw=1)
            axes[1].set_xlabel("s since the writer started")
            axes[1].set_ylabel("events not yet acknowledged")
            axes[1].set_title("Draining a backlog")
        fig.tight_layout()
        fig.savefig(out / "writer_lag.png", dpi=100)
        plt.close(fig)
        made.append("writer_lag.png")
    return made
