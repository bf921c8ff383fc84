"""Latency at a fixed request rate.

The hot endpoints need their own user and code in every request (a code is
locked or redeemed once), which `hey` cannot do: it repeats one request. So
every endpoint is driven by bench/openloop.py, a constant-rate client that
takes a list of pre-built requests. `hey -q` is run on /healthz beside it, as
an independent check of the client's figures.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

OPENLOOP = Path(__file__).resolve().parent / "openloop.py"
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles of latencies in seconds, in milliseconds."""
    if not samples:
        return {}
    ordered = sorted(samples)
    out = {}
    for p in PERCENTILES:
        rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
        out[f"p{p:g}"] = round(ordered[rank] * 1000, 3)
    out["max"] = round(ordered[-1] * 1000, 3)
    out["mean"] = round(sum(ordered) / len(ordered) * 1000, 3)
    return out


def build_requests(url: str, mode: str, token: str, count: int, *, book: str = "",
                   pairs: list[tuple[str, str]] | None = None, tag: str = "u") -> list[bytes]:
    """Raw HTTP/1.1 requests, each with its own user (and code where needed)."""
    host = urlsplit(url).netloc
    auth = f"Authorization: Bearer {token}\r\n"

    def get(path: str, with_auth: bool = True) -> bytes:
        return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                f"{auth if with_auth else ''}\r\n").encode()

    def post(path: str, body: str) -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                f"{body}").encode()

    out: list[bytes] = []
    for i in range(count):
        if mode == "healthz":
            out.append(get("/healthz", with_auth=False))
        elif mode == "assign":
            out.append(post("/coupons/assign",
                            f'{{"couponBookId":"{book}","userId":"{tag}{i}"}}'))
        else:
            assert pairs, f"{mode} needs (code, user) pairs"
            if mode in ("lock", "redeem") and i >= len(pairs):
                break  # each pair is used once
            code, user = pairs[i % len(pairs)]
            if mode == "list":
                out.append(get(f"/users/{user}/coupons"))
            elif book:  # lock, redeem: the code's book, named
                out.append(post(f"/coupons/{mode}/{code}",
                                f'{{"userId":"{user}","couponBookId":"{book}"}}'))
            else:
                out.append(post(f"/coupons/{mode}/{code}", f'{{"userId":"{user}"}}'))
    return out


def open_loop(url: str, requests: list[bytes], rate: float, seconds: float,
              connections: int = 64) -> dict[str, object]:
    parts = urlsplit(url)
    tmp = Path(tempfile.mkdtemp(prefix="openloop-"))
    try:
        (tmp / "requests").write_bytes(b"\n".join(base64.b64encode(r) for r in requests))
        spec = {"host": parts.hostname, "port": parts.port or 80, "rate": rate,
                "seconds": seconds, "connections": connections,
                "requests": str(tmp / "requests")}
        (tmp / "spec.json").write_text(json.dumps(spec))
        subprocess.run([sys.executable, str(OPENLOOP), str(tmp / "spec.json"),
                        str(tmp / "out.json")], check=True, timeout=seconds + 120)
        raw = json.loads((tmp / "out.json").read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ok = sum(v for k, v in raw["statuses"].items() if k.startswith("2"))
    return {
        "tool": "bench/openloop.py (open loop, latency from the scheduled send time)",
        "target_rps": round(rate, 1),
        "achieved_rps": round(raw["completed"] / raw["elapsed"], 1) if raw["elapsed"] else 0,
        "sent": raw["sent"], "ok": ok, "statuses": raw["statuses"], "errors": raw["errors"],
        "latency_ms": percentiles_ms(raw["latency"]),
        "latency_from_write_ms": percentiles_ms(raw["sent_latency"]),
        # due -> written: timer lateness, or every connection busy (a queue forming)
        "send_wait_ms": percentiles_ms(raw["send_wait"]),
        "connections": connections,
    }


def hey(url: str, rate: float, seconds: float, workers: int = 16) -> dict[str, object] | None:
    """hey -q on /healthz (one repeated request): rate-limited workers, latency
    from each request's own send time."""
    if shutil.which("hey") is None:
        return None
    workers = max(1, min(workers, int(rate)))
    proc = subprocess.run(["hey", "-z", f"{max(1, round(seconds))}s", "-c", str(workers),
                           "-q", f"{rate / workers:.3f}", "-o", "csv", f"{url}/healthz"],
                          capture_output=True, text=True, timeout=seconds + 60)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    if not rows:
        return {"error": proc.stderr[-500:]}
    times = [float(r["response-time"]) for r in rows]
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status-code"]] = statuses.get(r["status-code"], 0) + 1
    span = max(float(r["offset"]) for r in rows) or seconds
    return {"tool": f"hey -c {workers} -q {rate / workers:.1f}", "target_rps": round(rate, 1),
            "achieved_rps": round(len(rows) / span, 1), "statuses": statuses,
            "latency_ms": percentiles_ms(times)}
