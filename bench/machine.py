"""What a run was measured on, recorded next to its figures, and how busy the
machine was with anything else while a phase ran."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                              cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def _package_version(name: str) -> str:
    return _run(["dpkg-query", "-W", "-f=${Version}", name]) or "not installed"


def describe(redis_version: str = "", postgres_version: str = "") -> dict[str, object]:
    commit = _run(["git", "rev-parse", "HEAD"])
    dirty = bool(_run(["git", "status", "--porcelain", "--", "src", "lua"]))
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": commit + (" (src/ or lua/ modified)" if dirty else ""),
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "redis": redis_version or "unknown",
        "postgres": postgres_version or "unknown",
        "packages": {"uvicorn": pkg("uvicorn"), "starlette": pkg("starlette"),
                     "redis-py": pkg("redis"), "hiredis": pkg("hiredis"),
                     "asyncpg": pkg("asyncpg"), "uvloop": pkg("uvloop"),
                     "httptools": pkg("httptools"), "wrk": _package_version("wrk"),
                     "hey": _package_version("hey")},
        "load_average_at_start": os.getloadavg()[0],
    }


# --- CPU accounting ----------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _system_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / _TICK, total / _TICK


def _process_seconds(pid: int, children: bool = False) -> float:
    """CPU seconds of a process, and with `children` of its exited children
    (back-ends of a postmaster, Redis's AOF rewrites)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(v) for v in f[11:15 if children else 13]) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _tree_seconds(parent: int) -> float:
    """A process and its live children (a postmaster and its back-ends)."""
    total = _process_seconds(parent, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(Path(entry, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent:
                total += _process_seconds(int(entry.name))
    return total


def _children_seconds() -> float:
    """CPU seconds of our own exited children: the load generators."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU used by each of our processes, and by the machine as a whole, over a
    phase. `other` is what processes not ours used: a noisy neighbour."""

    def __init__(self, pids: dict[str, int], trees: dict[str, int] | None = None) -> None:
        self.pids = pids
        self.trees = trees or {}

    def _snapshot(self) -> dict[str, float]:
        snap = {name: _process_seconds(pid, children=name.startswith("redis"))
                for name, pid in self.pids.items()}
        for name, pid in self.trees.items():
            snap[name] = _tree_seconds(pid)
        snap["load generator"] = _children_seconds()
        busy, total = _system_busy_seconds()
        snap["_busy"], snap["_total"], snap["_wall"] = busy, total, time.monotonic()
        return snap

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> dict[str, float]:
        """Cores used on average by each over the phase; the load generator (wrk,
        hey, openloop.py) is counted once it has exited."""
        end = self._snapshot()
        wall = end["_wall"] - self._start["_wall"]
        if wall <= 0:
            return {}
        out = {name: round((end[name] - self._start[name]) / wall, 2)
               for name in end if not name.startswith("_")}
        machine = (end["_busy"] - self._start["_busy"]) / wall
        out["machine"] = round(machine, 2)
        out["other"] = round(max(0.0, machine - sum(v for k, v in out.items()
                                                    if k not in ("machine",))), 2)
        return out
