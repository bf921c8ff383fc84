"""What the soak watches while it runs, in a thread: the writer's lag every
half second, and every few seconds the memory of the processes it started.

Memory is VmRSS from /proc/<pid>/status, summed over a process and all its
descendants (an API with several workers, say). Redis is read with INFO
memory; the lag is the API's own gauge (GET /metrics) and the backlog in
Redis, as bench/service.py's LagSampler reads them.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from service import Api, Background, Outbox

_GAUGE = re.compile(r"^couponsvc_outbox_oldest_unacked_seconds ([0-9.eE+-]+)$", re.M)


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = int(Path(entry, "stat").read_text()
                                           .rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return out


def tree(pid: int, parents: dict[int, int]) -> list[int]:
    """A process and all its descendants."""
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0  # gone, or a kernel thread


@dataclass
class Watch(Background):
    """Samples until stopped. `pids`: name -> the PID whose tree is measured.
    Times are time.monotonic(), so they line up with the load's own clock."""

    api: Api
    redis_url: str
    pids: dict[str, int]
    interval: float = 5.0
    lag_interval: float = 0.5
    started: float = 0.0
    memory: list[dict[str, float]] = field(default_factory=list)
    lag: list[dict[str, float]] = field(default_factory=list)

    def __enter__(self) -> Watch:
        self.started = time.monotonic()
        super().__enter__()
        return self

    def _loop(self) -> None:
        outbox = Outbox(self.redis_url)  # a client of its own: this is another thread
        http = httpx.Client(base_url=self.api.url, timeout=5)
        next_memory = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                self.lag.append(self._lag(http, outbox, now))
                if now >= next_memory:
                    self.memory.append(self._memory(outbox, now))
                    next_memory = now + self.interval
                self._stop.wait(max(0.0, now + self.lag_interval - time.monotonic()))
        finally:
            http.close()
            outbox.close()

    def _lag(self, http: httpx.Client, outbox: Outbox, now: float) -> dict[str, float]:
        sample: dict[str, float] = {"at": now, "oldest_unacked_s": math.nan}
        try:
            found = _GAUGE.search(http.get("/metrics").text)
            if found:
                sample["oldest_unacked_s"] = float(found.group(1))
        except httpx.HTTPError:
            pass
        try:
            sample["backlog"] = outbox.backlog()
        except redis.RedisError:
            sample["backlog"] = math.nan  # Redis is down: the soak's errors will say so
        return sample

    def _memory(self, outbox: Outbox, now: float) -> dict[str, float]:
        parents = _parents()
        sample: dict[str, float] = {"at": now}
        for name, pid in self.pids.items():
            pids = tree(pid, parents)
            sample[f"{name}_rss_mb"] = round(sum(rss_kib(p) for p in pids) / 1024, 2)
            sample[f"{name}_processes"] = len([p for p in pids if rss_kib(p)])
        try:
            info = outbox.redis.info("memory")
            persistence = outbox.redis.info("persistence")
        except redis.RedisError:
            return sample
        sample["redis_used_memory_mb"] = round(int(info["used_memory"]) / 2**20, 2)
        sample["redis_rss_mb"] = round(int(info["used_memory_rss"]) / 2**20, 2)
        # An automatic AOF rewrite forks and copies the dataset: on a small
        # machine it is the likeliest cause of a slow stretch.
        sample["redis_aof_rewriting"] = int(persistence["aof_rewrite_in_progress"])
        return sample
