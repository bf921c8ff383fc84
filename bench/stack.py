"""The servers a local benchmark run starts: redis-server, PostgreSQL, and the
service's own processes (migrate, writer, one API process; restarted with
several uvicorn workers for the workers phase).

Every process is started here and stopped here by its own PID, in reverse
order, even when a phase fails. PostgreSQL runs as the `postgres` user when
we are root (it refuses to run as root), with its default durability
settings (fsync on), as a production database would.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
STARTED = b"Application startup complete."  # uvicorn logs it once per worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    path = found[0] if found else shutil.which(name)
    if not path:
        raise RuntimeError(f"{name} not found: run scripts/ensure-deps.sh")
    return path


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _wait(check, what: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready in {timeout:.0f} s")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Stack:
    """Owns a scratch directory and the processes started in it."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="couponsvc-bench-")))
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    pg_data: Path | None = None
    api_port: int = 0
    redis_port: int = 0
    pg_port: int = 0

    # --- servers ---------------------------------------------------------

    def start_redis(self, name: str = "redis") -> int:
        """A redis-server on a free port, AOF as in production (README: fsync every
        second, rewritten at 5x its last compact size)."""
        port = free_port()
        data = self.root / name
        data.mkdir()
        self._spawn(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                           "--dir", str(data), "--appendonly", "yes",
                           "--appendfsync", "everysec", "--auto-aof-rewrite-percentage", "400",
                           "--rdbcompression", "no",
                           # For DEBUG HTSTATS-KEY (Outbox.finish_rehash), from here only.
                           "--enable-debug-command", "local",
                           "--save", "",
                           "--logfile", str(data / "redis.log")])
        _wait(lambda: _port_open(port), name, proc=self.procs[name])
        return port

    def start_postgres(self) -> int:
        self.root.chmod(0o755)
        pg_root = self.root / "pg"
        pg_root.mkdir()
        if os.geteuid() == 0:
            shutil.chown(pg_root, "postgres", "postgres")
        self.pg_data = pg_root / "data"
        subprocess.run(_as_postgres([pg_bin("initdb"), "-D", str(self.pg_data), "-U", "postgres",
                                     "-A", "trust", "-E", "UTF8"]),
                       check=True, capture_output=True)
        port = free_port()
        # shared_buffers: Postgres's default 128 MB is smaller than the tables
        # and indexes the bench writes; the writer's upserts then spent about a
        # third of Postgres's CPU evicting pages and reading them back (perf).
        self._spawn("postgres", _as_postgres([
            pg_bin("postgres"), "-D", str(self.pg_data), "-p", str(port), "-k", str(pg_root),
            "-c", "listen_addresses=127.0.0.1", "-c", "max_wal_size=4GB",
            "-c", "shared_buffers=2GB"]),
            log=pg_root / "postgres.log")

        def ready() -> bool:
            probe = subprocess.run([pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port),
                                    "-U", "postgres"], capture_output=True)
            return probe.returncode == 0

        _wait(ready, "postgres", proc=self.procs["postgres"])
        self.pg_port = port
        return port

    # --- the service -----------------------------------------------------

    def start_service(self) -> None:
        self.redis_port = self.start_redis()
        self.start_postgres()
        self.api_port = free_port()
        self.env = {
            **os.environ,
            "COUPONSVC_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "COUPONSVC_DATABASE_URL": self.database_url,
            "COUPONSVC_JWT_SECRET": secrets.token_urlsafe(36),  # 48 characters
            "COUPONSVC_HOST": "127.0.0.1",
            "COUPONSVC_PORT": str(self.api_port),
            "COUPONSVC_ENV": "prod",
            # The benchmarks send thousands of assigns per caller and per
            # address; the abuse limits would answer most of them 429.
            "COUPONSVC_RATE_LIMITS": "off",
        }
        subprocess.run([str(VENV_BIN / "couponsvc"), "migrate"], env=self.env, check=True,
                       capture_output=True)
        self.start_writer()
        self.start_api()

    def start_api(self, workers: int = 1) -> None:
        """`couponsvc serve` with COUPONSVC_WORKERS=workers (stopping the one
        running); returns once every worker has started and the port answers."""
        self.stop("api")
        log = self.root / "api.log"
        started = log.read_bytes().count(STARTED) if log.exists() else 0
        self._spawn("api", [str(VENV_BIN / "couponsvc"), "serve"],
                    env={**self.env, "COUPONSVC_WORKERS": str(workers)}, log=log)
        _wait(lambda: log.read_bytes().count(STARTED) >= started + workers
              and _port_open(self.api_port), f"couponsvc serve ({workers} workers)",
              proc=self.procs["api"])

    def start_writer(self) -> None:
        self._spawn("writer", [str(VENV_BIN / "couponsvc"), "writer"], env=self.env,
                    log=self.root / "writer.log")

    def stop_writer(self) -> None:
        self.stop("writer")

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def token(self, sub: str = "bench", scope: str = "coupons:admin coupons:write",
              ttl: int = 3 * 3600) -> str:
        out = subprocess.run([str(VENV_BIN / "couponsvc"), "token", "--sub", sub,
                              "--scope", scope, "--ttl", str(ttl)],
                             env=self.env, check=True, capture_output=True, text=True)
        return out.stdout.strip()

    # --- processes -------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
               log: Path | None = None) -> None:
        out = open(log or (self.root / f"{name}.log"), "ab")  # noqa: SIM115 - the child owns it
        self.procs[name] = subprocess.Popen(cmd, env=env, stdout=out, stderr=out,
                                            stdin=subprocess.DEVNULL)
        out.close()

    def stop(self, name: str, timeout: float = 20.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        pid = proc.pid
        sig = signal.SIGTERM
        if name == "postgres" and self.pg_data is not None:
            # runuser does not pass signals on: signal the postmaster itself.
            # SIGINT is PostgreSQL's fast shutdown.
            try:
                pid = int((self.pg_data / "postmaster.pid").read_text().split()[0])
            except (FileNotFoundError, ValueError, IndexError):
                pid = proc.pid
            sig = signal.SIGINT
        try:
            os.kill(pid, sig)
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self, keep: bool = False) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)
