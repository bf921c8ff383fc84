"""The processes an integration test runs: a redis-server and the API
(`python -m couponsvc serve`), each on a port picked at run time, started and
awaited until they answer, and stopped by their own PIDs; nothing is ever
killed by name. `started` and `running_stack` tie their lives to a block."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx

from .tokens import ADMIN, WRITE, make_token

PROJECT_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 15.0
# The API's COUPONSVC_MAX_BODY_BYTES (the limit of an upload of codes): small,
# so that a test can send a body past it cheaply.
MAX_UPLOAD_BYTES = 1_048_576


def free_port() -> int:
    """A TCP port nobody listens on right now (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                 timeout: float = STOP_TIMEOUT_SECONDS) -> int:
    """Signals one process this suite started, by its own PID, SIGKILLs it if it
    outlives `timeout`, reaps it and returns its exit code (redis-server, the API
    and the writers; Postgres and the Redis Cluster stop their own)."""
    if process.poll() is None:
        process.send_signal(sig)
        process.send_signal(signal.SIGCONT)  # a paused process must run to see the signal
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A real redis-server without persistence, on a port chosen at run time."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / f"redis-{self.port}.log"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             *self.persistence(), "--dir", str(self.directory),
             "--logfile", str(self.log_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not redis_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log_path.read_text() if self.log_path.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.02)
        return self

    def persistence(self) -> list[str]:
        return ["--save", "", "--appendonly", "no"]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop_process(self.process, sig)
            self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown, connections reset."""
        self.stop(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@dataclass
class ApiServer:
    """`python -m couponsvc serve` on a free port, its stderr kept in a file."""

    redis_url: str
    directory: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(36))  # 48 characters
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / f"api-{self.port}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> ApiServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("COUPONSVC_")}
        env.update({
            "COUPONSVC_REDIS_URL": self.redis_url,
            "COUPONSVC_HOST": "127.0.0.1",
            "COUPONSVC_PORT": str(self.port),
            "COUPONSVC_JWT_SECRET": self.secret,
            "COUPONSVC_ENV": "test",
            "COUPONSVC_KEY_PREFIX": "cb",
            "COUPONSVC_MAX_BODY_BYTES": str(MAX_UPLOAD_BYTES),
            # The suite fires many requests per caller; the abuse limits have
            # their own tests (test_rate_limits.py), which turn them on.
            "COUPONSVC_RATE_LIMITS": "off",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        })
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "couponsvc", "serve"],
                cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the API on port {self.port} did not start:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    # --- tokens signed with this server's secret ------------------------------

    def token(self, sub: str | None = "admin", scope: str | list[str] | None = None, *,
              ttl: int | None = 3600, key: str | None = None, **claims: Any) -> str:
        return make_token(key or self.secret, sub, scope, ttl=ttl, **claims)

    @property
    def admin(self) -> str:
        return self.token("admin-" + uuid.uuid4().hex[:8], f"{ADMIN} {WRITE}")

    @property
    def writer(self) -> str:
        return self.token("checkout-backend", WRITE)

    def user(self, user_id: str) -> str:
        """An end user's token: no scope, acts only for itself."""
        return self.token(user_id)


class Server(Protocol):
    def start(self) -> object: ...

    def stop(self) -> None: ...


ServerT = TypeVar("ServerT", bound=Server)


@contextmanager
def started(server: ServerT) -> Iterator[ServerT]:
    """Starts a server and stops it when the block ends, however it ends, so a
    fixture that owns a server needs no try/finally of its own."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Stack:
    """A redis-server and an API process that uses it."""

    redis: RedisServer
    api: ApiServer


@contextmanager
def running_stack(directory: Path, secret: str | None = None,
                  **extra_env: str) -> Iterator[Stack]:
    """A redis-server and an API; the API checks tokens against `secret` when
    given (so tokens can be made before it starts)."""
    with started(RedisServer(directory / "redis")) as redis:
        api = ApiServer(redis.url, directory, extra_env)
        if secret is not None:
            api.secret = secret
        with started(api):
            yield Stack(redis, api)

