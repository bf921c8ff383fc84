"""Peak throughput with wrk and bench/wrk/requests.lua.

A phase that uses each (code, user) pair once ends when its pairs are used up:
every wrk thread writes a marker file when its share is done and stops, and
we then interrupt wrk (it otherwise sleeps out its whole -d), so the rate is
measured over the time the pairs really took.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "wrk" / "requests.lua"


@dataclass
class WrkResult:
    mode: str
    seconds: float
    ok: int
    statuses: dict[str, int]
    errors: dict[str, int]
    latency_ms: dict[str, float]

    @property
    def rps(self) -> float:
        """Successful (2xx) requests per second."""
        return self.ok / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "seconds": round(self.seconds, 3), "ok": self.ok,
                "rps": round(self.rps, 1), "statuses": self.statuses, "errors": self.errors,
                "latency_ms_closed_loop": self.latency_ms}


def run_wrk(url: str, mode: str, token: str, *, seconds: float, threads: int = 2,
            connections: int = 64, book: str = "-", pairs: Path | None = None,
            tag: str = "u", until_pairs_used: bool = False) -> WrkResult:
    markers = Path(tempfile.mkdtemp(prefix="wrk-markers-"))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
           "--timeout", "10s", "-s", str(SCRIPT), url, "--", mode, token, book,
           str(pairs) if pairs else "-", tag, str(markers) if until_pairs_used else "-"]
    env = {**os.environ, "BENCH_WRK_THREADS": str(threads)}
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)
    try:
        if until_pairs_used:
            all_sent = None
            while proc.poll() is None:
                done = len(list(markers.glob("done-*"))) >= threads
                if all_sent is None and len(list(markers.glob("sent-*"))) >= threads:
                    all_sent = time.monotonic()
                # Every answer in, or some never came (a socket error): stop wrk now.
                if done or (all_sent is not None and time.monotonic() - all_sent > 2.0):
                    proc.send_signal(signal.SIGINT)  # ends wrk's sleep: it reports now
                    break
                time.sleep(0.01)
        out, err = proc.communicate(timeout=seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(markers, ignore_errors=True)
    wall = time.monotonic() - started
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH-JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result (exit {proc.returncode}): {out}\n{err}")
    data = json.loads(line.removeprefix("BENCH-JSON "))
    statuses = {k: int(v) for k, v in sorted(data["statuses"].items())}
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    lat = {k: round(v / 1000, 3) for k, v in data["latency_us"].items()}
    duration = data["duration_us"] / 1e6 or wall
    return WrkResult(mode=mode, seconds=duration, ok=ok, statuses=statuses,
                     errors=data["errors"], latency_ms=lat)
