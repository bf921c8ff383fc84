"""A throw-away PostgreSQL cluster for tests.

PostgreSQL refuses to run as root, so when the suite runs as root the server
runs as the `postgres` user (via runuser); otherwise as the current user. It
listens on a free loopback port and a private socket directory, and is stopped
by its own PID.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from couponsvc import db


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary: Debian keeps them under /usr/lib/postgresql/N/bin."""
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    found = candidates[0] if candidates else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: run scripts/ensure-deps.sh")
    return found


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class Postgres:
    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            _as_server_user([pg_bin("initdb"), "-D", str(self.data), "-U", "postgres",
                             "-A", "trust", "--no-sync", "-E", "UTF8"]),
            check=True, capture_output=True,
        )

    def start(self) -> None:
        with open(self.root / "postgres.log", "ab") as log:  # the child keeps its own copy
            self._spawn(log)
        self.wait_ready()

    def _spawn(self, log: Any) -> None:
        self.process = subprocess.Popen(
            _as_server_user([pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port),
                             "-k", str(self.root), "-c", "listen_addresses=127.0.0.1",
                             "-c", "fsync=off", "-c", "full_page_writes=off",
                             "-c", "synchronous_commit=off"]),
            stdout=log, stderr=log,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: see {self.root / 'postgres.log'}")
            probe = subprocess.run([pg_bin("pg_isready"), "-h", "127.0.0.1", "-p",
                                    str(self.port), "-U", "postgres"], capture_output=True)
            if probe.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not become ready")

    def postmaster_pid(self) -> int:
        """The server's own PID (runuser, its parent, does not pass on SIGKILL)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self, sig: int = signal.SIGINT) -> None:
        """SIGINT is PostgreSQL's fast shutdown; SIGKILL simulates a crash."""
        if self.process is None:
            return
        try:
            os.kill(self.postmaster_pid(), sig)
        except (FileNotFoundError, ProcessLookupError):
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def start_postgres() -> Postgres:
    """A new cluster in its own folder under the system temp dir (pytest's
    temp dirs are private to root, and the server runs as `postgres`)."""
    root = Path(tempfile.mkdtemp(prefix="couponsvc-pg-"))
    root.chmod(0o755)
    server = Postgres(root=root, port=free_port())
    server.init()
    server.start()
    return server


def remove(server: Postgres) -> None:
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)


# A migrated template database per cluster; tests clone it (CREATE DATABASE ...
# TEMPLATE) so each gets fresh, migrated tables in milliseconds.
TEMPLATE = "couponsvc_template"


def database_url(server: Postgres, name: str) -> str:
    return server.url.rsplit("/", 1)[0] + f"/{name}"


def start_migrated() -> Postgres:
    """A new cluster holding the migrated template database."""
    server = start_postgres()

    async def make_template() -> None:
        admin = await asyncpg.connect(server.url)
        try:
            await admin.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await admin.close()
        conn = await asyncpg.connect(database_url(server, TEMPLATE))
        try:
            await db.migrate(conn)
        finally:
            await conn.close()

    try:
        asyncio.run(make_template())
    except BaseException:
        remove(server)
        raise
    return server


@contextmanager
def migrated() -> Iterator[Postgres]:
    """start_migrated() for a with block: the cluster is stopped and its folder
    removed however the block ends (the fixtures that own a cluster use it)."""
    server = start_migrated()
    try:
        yield server
    finally:
        remove(server)


async def clone_database(server: Postgres) -> str:
    """A fresh database copied from the template; its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server.url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    finally:
        await admin.close()
    return database_url(server, name)
