"""`couponsvc serve` with COUPONSVC_WORKERS=2: two uvicorn worker processes
share the port, both answer, the rules hold across them, and SIGTERM to the
parent stops every one of them.

Each test has its own redis-server and API; only those processes (and the
workers the API started) are looked at or signalled.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .api_client import Api, http_client
from .names import new_user
from .problems import assert_problem
from .servers import START_TIMEOUT_SECONDS, STOP_TIMEOUT_SECONDS, ApiServer, Stack, running_stack

pytestmark = pytest.mark.integration

WORKERS = 2
STARTED = "Application startup complete."
CODES = 300  # assigned all at once, over up to 100 client connections
ROUNDS = 5  # bursts of new connections until each worker holds some


@pytest.fixture
def workers_stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path, COUPONSVC_WORKERS=str(WORKERS)) as stack:
        yield stack


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, or None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time): tells a process from a later one given the same PID."""
    fields = _stat(pid)
    return None if fields is None or fields[0] == "Z" else (pid, fields[19])


def children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def worker_pids(parent: int) -> list[int]:
    """uvicorn's workers: the parent's multiprocessing children (not its resource tracker)."""
    pids = []
    for pid in children(parent):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            pids.append(pid)
    return sorted(pids)


def wait_for_workers(server: ApiServer) -> list[int]:
    """The worker PIDs, once every worker has finished its start-up."""
    assert server.process is not None
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        pids = worker_pids(server.process.pid)
        if len(pids) == WORKERS and server.log().count(STARTED) == WORKERS:
            return pids
        assert time.monotonic() < deadline, f"workers {pids}; log:\n{server.log()}"
        time.sleep(0.05)


def connections_held(pid: int, port: int) -> int:
    """Established TCP connections on `port` whose socket process `pid` holds:
    the client connections that worker accepted."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    held = 0
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:  # ESTABLISHED
                held += 1
    return held


async def test_both_workers_serve_and_the_rules_hold_across_them(workers_stack: Stack) -> None:
    server = workers_stack.api
    workers = wait_for_workers(server)
    async with http_client(server.base_url) as setup:
        book, codes = await Api(setup, server).book_with_codes(CODES)

    # The race runs over the client's 100 connections: first open them, in
    # bursts of new clients, until each worker holds some of one client's.
    for _ in range(ROUNDS):
        client = http_client(server.base_url)
        answers = await asyncio.gather(*(client.get("/healthz") for _ in range(200)))
        assert {r.status_code for r in answers} == {200}
        held = {pid: connections_held(pid, server.port) for pid in workers}
        if all(held.values()):
            break
        await client.aclose()
    assert all(held.values()), f"connections held by each worker: {held}"

    try:
        api = Api(client, server)
        # Every code to its own user, all at once, through both processes: they
        # run the same atomic scripts, so no code goes out twice and the book
        # runs dry exactly.
        responses = await asyncio.gather(*(api.assign(book["id"], new_user())
                                           for _ in range(CODES)))
        assert [r.status_code for r in responses] == [200] * CODES
        assert sorted(r.json()["code"] for r in responses) == sorted(codes)
        assert_problem(await api.assign(book["id"], new_user()), 409, "book-exhausted")
    finally:
        await client.aclose()


def test_sigterm_to_the_parent_stops_every_worker(workers_stack: Stack) -> None:
    server = workers_stack.api
    assert server.process is not None
    parent = server.process
    workers = wait_for_workers(server)
    started = {pid: identity(pid) for pid in children(parent.pid)}  # workers and tracker
    assert set(workers) <= set(started) and None not in started.values()

    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=STOP_TIMEOUT_SECONDS) == 0
    server.process = None  # stopped and reaped here

    # multiprocessing's resource tracker exits once it reads the end of its
    # pipe, a moment after the parent: give every child a moment, not forever.
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while still_running := [pid for pid, was in started.items() if identity(pid) == was]:
        assert time.monotonic() < deadline, f"still running: {still_running}"
        time.sleep(0.05)
    log = server.log()
    for pid in workers:  # each worker shut its application down before exiting
        assert f"Finished server process [{pid}]" in log, log
    assert log.count("Application shutdown complete.") == WORKERS, log
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", server.port)) != 0  # nobody listens any more
