"""A constant-rate (open-loop) HTTP/1.1 load client, wrk2-style.

Request i is due at t0 + i/rate whatever happened to the ones before it, and
its latency is counted from that moment, not from when a connection was free
to send it. A slow answer therefore shows up in the latency of every request
that had to wait behind it (no coordinated omission). Each request is its own
pre-built byte string, so every request can carry its own user and code.

    python bench/openloop.py SPEC.json OUT.json

SPEC: {"host", "port", "rate", "seconds", "connections", "requests": file of
raw requests, one per line, base64}. OUT: counts by status and the latencies.

Timers in the event loop tick in milliseconds: a request can leave up to about
a millisecond after it is due, and that delay is counted in its latency (the
figures err on the slow side). `sent_latency` counts from the actual write.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections import deque
from pathlib import Path


class Conn(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.due = 0.0
        self.sent = 0.0
        self.need = -1  # bytes of the current response, once its head is in
        self.status = 0
        self.busy = False
        self.body_at = 0
        self.body = b""  # the last response's body, when the client keeps bodies

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's own class

    def send(self, request: bytes, due: float) -> None:
        self.due, self.sent, self.need, self.busy = due, time.perf_counter(), -1, True
        self.transport.write(request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            # Unasked for (say a server's 408 before it closes an idle
            # connection): no request of ours is waiting for it.
            self.buf.clear()
            return
        self.buf += data
        if self.need < 0:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self.buf[:head_end]).lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0
                              else len(head)]) if at >= 0 else 0
            self.body_at = head_end + 4
            self.need = self.body_at + length
            self.status = int(head[9:12])
        if len(self.buf) >= self.need:
            if self.client.keep_bodies:
                self.body = bytes(self.buf[self.body_at:self.need])
            del self.buf[:self.need]
            self.need, self.busy = -1, False
            self.client.done(self, self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost(self)


class Client:
    keep_bodies = False  # a client that reads answers (bench/soakflow.py) sets it

    def __init__(self, requests: list[bytes], rate: float,
                 address: tuple[str, int] | None = None) -> None:
        self.requests = requests
        self.rate = rate
        self.address = address  # where to open a connection that replaces a lost one
        self.idle: list[Conn] = []
        self.waiting: deque[tuple[int, float]] = deque()
        self.latency: list[float] = []
        self.sent_latency: list[float] = []
        self.send_wait: list[float] = []  # due -> written: the client's own delay
        self.statuses: dict[str, int] = {}
        self.completed = 0
        self.errors = 0
        self.finished = asyncio.get_running_loop().create_future()

    def dispatch(self, index: int, due: float) -> None:
        if self.idle:
            self.idle.pop().send(self.requests[index], due)
        else:
            self.waiting.append((index, due))

    def done(self, conn: Conn, status: int) -> None:
        now = time.perf_counter()
        self.latency.append(now - conn.due)
        self.sent_latency.append(now - conn.sent)
        self.send_wait.append(conn.sent - conn.due)
        key = str(status)
        self.statuses[key] = self.statuses.get(key, 0) + 1
        self._next(conn)

    def _next(self, conn: Conn) -> None:
        self.completed += 1
        if self.waiting:
            index, due = self.waiting.popleft()
            conn.send(self.requests[index], due)
        else:
            self.idle.append(conn)
        if self.completed >= len(self.requests) and not self.finished.done():
            self.finished.set_result(None)

    def lost(self, conn: Conn) -> None:
        self.idle = [c for c in self.idle if c is not conn]
        if conn.busy:
            conn.busy = False
            self.errors += 1
            self.completed += 1
            if self.completed >= len(self.requests) and not self.finished.done():
                self.finished.set_result(None)
        if self.address is not None and not self.finished.done():
            # The server closed it (an idle connection's deadline, a restart):
            # keep the pool its size.
            asyncio.get_running_loop().create_task(self._replace())

    async def _replace(self) -> None:
        assert self.address is not None
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                lambda: Conn(self), *self.address)
        except OSError:
            return
        if self.waiting:
            index, due = self.waiting.popleft()
            conn.send(self.requests[index], due)
        else:
            self.idle.append(conn)


async def run(spec: dict) -> dict:
    lines = Path(spec["requests"]).read_bytes().split(b"\n")
    rate, seconds = float(spec["rate"]), float(spec["seconds"])
    total = min(int(rate * seconds), len([ln for ln in lines if ln]))
    requests = [base64.b64decode(ln) for ln in lines[:total]]
    client = Client(requests, rate, (spec["host"], spec["port"]))
    loop = asyncio.get_running_loop()
    for _ in range(int(spec.get("connections", 64))):
        _, conn = await loop.create_connection(lambda: Conn(client), spec["host"], spec["port"])
        client.idle.append(conn)
    t0 = time.perf_counter() + 0.05
    i = 0
    while i < total:
        now = time.perf_counter()
        due_count = min(total, int((now - t0) * rate) + 1) if now >= t0 else 0
        while i < due_count:
            client.dispatch(i, t0 + i / rate)
            i += 1
        # The loop's timers tick in whole milliseconds: a shorter sleep spins.
        await asyncio.sleep(max(0.001, t0 + i / rate - time.perf_counter()))
    sent_at = time.perf_counter()
    try:
        await asyncio.wait_for(client.finished, timeout=30)
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - t0
    return {"rate": rate, "seconds": seconds, "sent": total, "completed": client.completed,
            "elapsed": elapsed, "send_elapsed": sent_at - t0, "statuses": client.statuses,
            "errors": client.errors, "latency": client.latency,
            "sent_latency": client.sent_latency, "send_wait": client.send_wait}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(spec))
    else:
        result = uvloop.run(run(spec))
    Path(sys.argv[2]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
