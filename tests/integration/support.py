"""Servers, tokens and assertions shared by the integration tests.

Every server here listens on a port picked at run time and is stopped by its
own PID; nothing is ever killed by name.
"""

from __future__ import annotations

import base64
import json
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
from typing import Any, Protocol, TypeVar, cast

import httpx
import jwt
from redis.asyncio import Redis
from redis.asyncio import RedisCluster as ClusterClient

from support.cluster import RedisCluster

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROBLEM_MEDIA_TYPE = "application/problem+json"
# Generated codes draw from these characters (no look-alikes 0/O, 1/I).
ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
ADMIN = "coupons:admin"
WRITE = "coupons:write"
AUDIENCE = "coupon-service"
ISSUER = "https://issuer.test/"
START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 15.0
# Words that would betray a stack trace or internals leaking into a body.
LEAK_MARKERS = ("Traceback", 'File "', "site-packages", "couponsvc/", ".py\", line")


def free_port() -> int:
    """A TCP port nobody listens on right now (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                 timeout: float = STOP_TIMEOUT_SECONDS) -> int:
    """Signals one process this suite started, by its own PID, SIGKILLs it if it
    outlives `timeout`, reaps it and returns its exit code. Servers, the API and
    the writers are all stopped through here."""
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
            "COUPONSVC_MAX_BODY_BYTES": "1048576",
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
    """Starts a server and stops it when the block ends, however it ends: the
    one try/finally behind every fixture that owns a server."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


def redis_client(server: RedisServer | RedisCluster, **options: Any) -> Redis:
    """A client on either kind of server (`options` go to `from_url`); on a
    cluster it is a cluster client, which takes the same commands and routes
    them by slot."""
    if isinstance(server, RedisCluster):
        cluster = ClusterClient.from_url(server.url, decode_responses=True, **options)
        return cast(Redis, cluster)
    return Redis.from_url(server.url, decode_responses=True, **options)


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


def http_client(base_url: str, timeout: float = 30.0) -> httpx.AsyncClient:
    # Enough connections for the concurrency tests' requests to be in flight at once.
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits)


def make_token(key: str, sub: str | None, scope: str | list[str] | None = None, *,
               ttl: int | None = 3600, aud: str | list[str] | None = None,
               iss: str | None = None, **claims: Any) -> str:
    """An HS256 JWT; leave out `sub` (None) or `exp` (ttl=None) to forge bad ones."""
    payload: dict[str, Any] = {"iat": int(time.time())}
    optional = {"sub": sub, "exp": None if ttl is None else int(time.time()) + ttl,
                "scope": scope, "aud": aud, "iss": iss}
    payload.update({name: value for name, value in optional.items() if value is not None})
    payload.update(claims)
    return jwt.encode(payload, key, algorithm="HS256")


def unsigned_token(sub: str, scope: str = f"{ADMIN} {WRITE}") -> str:
    """A token with `alg: none` and an empty signature."""

    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = {"sub": sub, "scope": scope, "exp": int(time.time()) + 3600}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_user() -> str:
    return f"user-{uuid.uuid4()}"


def assert_no_leak(response: httpx.Response) -> None:
    for marker in LEAK_MARKERS:
        assert marker not in response.text, f"{marker!r} in the body: {response.text}"


def assert_unavailable(response: httpx.Response) -> None:
    """A fast 503 that tells the client when to retry: how an outage must answer."""
    assert_problem(response, 503, "service-unavailable")
    assert int(response.headers["retry-after"]) >= 1


def assert_problem(response: httpx.Response, status: int,
                   slug: str | None = None) -> dict[str, Any]:
    """An RFC 9457 problem with this status (and type, when given); returns its body."""
    assert response.status_code == status, response.text
    media = response.headers["content-type"].split(";")[0].strip()
    assert media == PROBLEM_MEDIA_TYPE, response.headers["content-type"]
    body: dict[str, Any] = response.json()
    for name in ("type", "title", "status", "detail"):
        assert name in body, f"{name} missing from {body}"
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if slug is not None:
        assert body["type"].rsplit("/", 1)[-1] == slug, body
    assert_no_leak(response)
    return body


def new_code(prefix: str = "C") -> str:
    """A code no other test uses (codes are unique across every book)."""
    return f"{prefix}{uuid.uuid4().hex[:16].upper()}"


@dataclass
class Api:
    """An httpx client on one API server, with the calls most tests repeat."""

    client: httpx.AsyncClient
    server: ApiServer

    async def post(self, path: str, body: Any = None, *, token: str | None = None,
                   headers: Mapping[str, str] | None = None) -> httpx.Response:
        """POST JSON; the token defaults to a back-end's (coupons:write)."""
        sent = {**bearer(token or self.server.writer), **(headers or {})}
        return await self.client.post(path, json=body, headers=sent)

    async def get(self, path: str, *, token: str | None = None,
                  params: Mapping[str, str | int] | None = None) -> httpx.Response:
        return await self.client.get(path, headers=bearer(token or self.server.admin),
                                     params=params)

    async def create_book(self, **fields: Any) -> dict[str, Any]:
        body = {"name": f"book {uuid.uuid4().hex[:8]}", **fields}
        response = await self.post("/coupons", body, token=self.server.admin)
        assert response.status_code == 201, response.text
        book: dict[str, Any] = response.json()
        return book

    async def upload(self, book_id: str, codes: list[Any]) -> dict[str, Any]:
        response = await self.post("/coupons/codes", {"couponBookId": book_id, "codes": codes},
                                   token=self.server.admin)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def book_with_codes(self, count: int, **fields: Any) -> tuple[dict[str, Any], list[str]]:
        """A new book holding `count` fresh codes of known names."""
        book = await self.create_book(**fields)
        codes = [new_code() for _ in range(count)]
        if codes:
            assert (await self.upload(book["id"], codes))["added"] == count
        return book, codes

    async def assign(self, book_id: str, user_id: str, *, token: str | None = None,
                     headers: Mapping[str, str] | None = None) -> httpx.Response:
        return await self.post("/coupons/assign", {"userId": user_id, "couponBookId": book_id},
                               token=token, headers=headers)

    async def assign_code(self, code: str, user_id: str, *,
                          token: str | None = None) -> httpx.Response:
        return await self.post(f"/coupons/assign/{code}", {"userId": user_id}, token=token)

    async def lock(self, code: str, user_id: str, ttl: int | None = None, *,
                   token: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"userId": user_id}
        if ttl is not None:
            body["ttlSeconds"] = ttl
        return await self.post(f"/coupons/lock/{code}", body, token=token)

    async def unlock(self, code: str, user_id: str, lock_token: str, *,
                     token: str | None = None) -> httpx.Response:
        return await self.post(f"/coupons/unlock/{code}",
                               {"userId": user_id, "lockToken": lock_token}, token=token)

    async def redeem(self, code: str, user_id: str, lock_token: str | None = None, *,
                     token: str | None = None,
                     headers: Mapping[str, str] | None = None) -> httpx.Response:
        body: dict[str, Any] = {"userId": user_id}
        if lock_token is not None:
            body["lockToken"] = lock_token
        return await self.post(f"/coupons/redeem/{code}", body, token=token, headers=headers)

    async def owned_code(self, **fields: Any) -> tuple[dict[str, Any], str, str]:
        """A new book with one code, assigned to a new user: (book, code, user)."""
        book, [code] = await self.book_with_codes(1, **fields)
        user = new_user()
        response = await self.assign_code(code, user)
        assert response.status_code == 200, response.text
        return book, code, user


async def book_keys(redis: Redis, book_id: str) -> str:
    """The `cb:{book:N}` prefix of a book's keys, N read from `cb:books`."""
    number = await redis.hget("cb:books", book_id)
    assert number is not None, f"{book_id} not in cb:books"
    return f"cb:{{book:{number}}}"


async def events(redis: Redis, book_id: str,
                 kind: str | None = None) -> list[dict[str, str]]:
    """The book's outbox stream, oldest first (only events of `kind`, when given)."""
    entries = await redis.xrange(f"{await book_keys(redis, book_id)}:events")
    found = [fields for _, fields in entries]
    return [e for e in found if kind is None or e["type"] == kind]
