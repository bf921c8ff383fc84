"""The soak's load: one checkout per new user, at a constant rate (open loop)
or back to back on every connection (closed loop, the mix's peak).

    python bench/soakflow.py SPEC.json OUT.jsonl

A session is one new user's checkout, with real lock tokens:

    POST /coupons/assign          a random free code (Idempotency-Key)
    GET  /users/{user}/coupons    `list` of the sessions: the user looks at the wallet
    POST /coupons/lock/{code}     -> lockToken
    POST /coupons/redeem/{code}   with the lockToken (Idempotency-Key); or
      unlock, lock, redeem        `retry` of the sessions: the first payment failed
      unlock                      `abandon` of the sessions: the user gave up

Open loop (`mode: open`): session i starts at t0 + i / session rate whatever
happened before, and each next step is due a think time (uniform, 0 to twice
`think` seconds) after the previous answer. A request's latency counts from
when it was due, including any wait for a free connection, so a stall shows in
every request queued behind it (no coordinated omission). Closed loop
(`mode: closed`): every connection runs sessions back to back, no think time.

OUT is JSON lines: first the start time, then one line every `interval`
seconds (the answers that arrived in that window by status, their latency
percentiles, requests sent, sessions started), and last the totals. A session
stops at its first answer that is not 2xx; at the end no new step is sent and
what is in flight is waited for (30 s at most, then counted as timeouts).

The HTTP/1.1 connection is bench/openloop.py's `Conn`; this module adds the
flow on top of it.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import random
import sys
import time
from array import array
from collections import deque
from pathlib import Path

from latency import percentiles_ms
from openloop import Conn

DEFAULT_SHARES = {"list": 0.3, "retry": 0.15, "abandon": 0.05}


def requests_per_session(shares: dict[str, float]) -> float:
    """Expected requests in one session: assign, lock, redeem or unlock; a
    retry adds an unlock and a lock; `list` adds one."""
    return 3 + shares["list"] + 2 * shares["retry"]


def plan(rng: random.Random, shares: dict[str, float]) -> tuple[str, ...]:
    steps = ["assign"]
    if rng.random() < shares["list"]:
        steps.append("list")
    steps.append("lock")
    r = rng.random()
    if r < shares["abandon"]:
        steps.append("unlock")
    elif r < shares["abandon"] + shares["retry"]:
        steps += ["unlock", "lock", "redeem"]
    else:
        steps.append("redeem")
    return tuple(steps)


class Session:
    __slots__ = ("user", "steps", "step", "code", "lock_token")

    def __init__(self, user: str, steps: tuple[str, ...]) -> None:
        self.user, self.steps, self.step = user, steps, 0
        self.code = self.lock_token = ""


class Window:
    """What happened in one `interval`: answers by the time they arrived."""

    def __init__(self) -> None:
        self.latency: list[float] = []
        self.statuses: dict[str, int] = {}
        self.bad: dict[str, int] = {}  # "step status" of every answer that is not 2xx
        self.steps: dict[str, int] = {}
        self.sent = 0
        self.sessions = 0
        self.queue_max = 0


class Flow:
    """The client side of Conn: keeps bodies, runs sessions, counts per window."""

    keep_bodies = True

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.host = f"{spec['host']}:{spec['port']}"
        self.auth = f"Authorization: Bearer {spec['token']}\r\n"
        self.book, self.tag = spec["book"], spec["tag"]
        self.shares = spec.get("shares", DEFAULT_SHARES)
        self.think = float(spec.get("think", 0.0))
        self.closed = spec["mode"] == "closed"
        self.interval = float(spec.get("interval", 5.0))
        self.rng = random.Random(spec.get("seed", 1))
        self.loop = asyncio.get_running_loop()
        self.idle: deque[Conn] = deque()  # oldest first: keeps every connection warm
        self.waiting: deque[tuple[Session, float]] = deque()
        self.later: list[tuple[float, int, Session]] = []  # steps waiting out a think time
        self.windows: dict[int, Window] = {}
        self.flushed = 0
        self.t0 = 0.0
        self.end = math.inf
        self.seconds = float(spec["seconds"])
        self.stopping = False
        self.in_flight = 0
        self.started = self.finished = self.failed = self.cut = 0
        self.ok_before_end = 0
        self.reconnects = self.connect_errors = 0
        self.latency: dict[str, array[float]] = {}
        self.statuses: dict[str, int] = {}
        self.bad: dict[str, int] = {}
        self.out = open(spec["out"], "w")  # noqa: SIM115 - closed in run()

    # --- requests ------------------------------------------------------------

    def _post(self, path: str, body: str, key: str = "") -> bytes:
        idem = f"Idempotency-Key: {key}\r\n" if key else ""
        return (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.auth}{idem}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                f"{body}").encode()

    def request(self, s: Session) -> bytes:
        step, user = s.steps[s.step], s.user
        if step == "assign":
            return self._post("/coupons/assign",
                              f'{{"couponBookId":"{self.book}","userId":"{user}"}}', f"{user}-a")
        if step == "list":
            return (f"GET /users/{user}/coupons?couponBookId={self.book} HTTP/1.1\r\n"
                    f"Host: {self.host}\r\n{self.auth}\r\n").encode()
        if step == "lock":
            return self._post(f"/coupons/lock/{s.code}", f'{{"userId":"{user}"}}')
        body = f'{{"userId":"{user}","lockToken":"{s.lock_token}"}}'
        if step == "unlock":
            return self._post(f"/coupons/unlock/{s.code}", body)
        return self._post(f"/coupons/redeem/{s.code}", body, f"{user}-r")

    # --- sessions ------------------------------------------------------------

    def window(self) -> Window:
        """The current window (by the clock: a queued step may be long overdue)."""
        index = max(0, int((time.perf_counter() - self.t0) / self.interval))
        if index not in self.windows:
            self.windows[index] = Window()
        return self.windows[index]

    def start_session(self, due: float) -> None:
        n = self.started
        self.started += 1
        self.window().sessions += 1
        self.dispatch(Session(f"{self.tag}{n}", plan(self.rng, self.shares)), due)

    def dispatch(self, s: Session, due: float) -> None:
        if self.idle:
            self._send(self.idle.popleft(), s, due)
        else:
            self.waiting.append((s, due))
            w = self.window()
            w.queue_max = max(w.queue_max, len(self.waiting))

    def _send(self, conn: Conn, s: Session, due: float) -> None:
        conn.job = s  # type: ignore[attr-defined]
        self.in_flight += 1
        self.window().sent += 1
        conn.send(self.request(s), due)

    def _free(self, conn: Conn) -> None:
        if self.waiting:
            s, due = self.waiting.popleft()
            self._send(conn, s, due)
        else:
            self.idle.append(conn)

    def _count(self, step: str, status: str, latency: float, now: float) -> None:
        w = self.window()
        w.latency.append(latency)
        w.statuses[status] = w.statuses.get(status, 0) + 1
        w.steps[step] = w.steps.get(step, 0) + 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latency.setdefault(step, array("d")).append(latency)
        if status.startswith("2"):
            if now <= self.end:
                self.ok_before_end += 1
        else:
            w.bad[f"{step} {status}"] = w.bad.get(f"{step} {status}", 0) + 1
            self.bad[f"{step} {status}"] = self.bad.get(f"{step} {status}", 0) + 1

    def done(self, conn: Conn, status: int) -> None:
        """Conn's callback: an answer is in."""
        now = time.perf_counter()
        s: Session = conn.job  # type: ignore[attr-defined]
        step = s.steps[s.step]
        self.in_flight -= 1
        self._count(step, str(status), now - conn.due, now)
        ok = 200 <= status < 300
        if ok and step in ("assign", "lock"):
            answer = json.loads(conn.body)
            if step == "assign":
                s.code = answer["code"]
            else:
                s.lock_token = answer["lockToken"]
        self._free(conn)
        if ok:
            self.advance(s, now)
        else:
            self.failed += 1
            self._replace_session(now)

    def lost(self, conn: Conn) -> None:
        """Conn's callback: the connection closed; a request on it is an error."""
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.busy:
            conn.busy = False
            now = time.perf_counter()
            s: Session = conn.job  # type: ignore[attr-defined]
            self.in_flight -= 1
            self._count(s.steps[s.step], "socket", now - conn.due, now)
            self.failed += 1
            self._replace_session(now)
        if not self.stopping or self.waiting:
            self.reconnects += 1
            self.loop.create_task(self.connect(retry=True))

    def advance(self, s: Session, now: float) -> None:
        s.step += 1
        if s.step >= len(s.steps):
            self.finished += 1
            self._replace_session(now)
        elif now >= self.end:
            self.cut += 1
        elif self.think > 0:
            due = now + self.rng.uniform(0, 2 * self.think)
            heapq.heappush(self.later, (due, id(s), s))
        else:
            self.dispatch(s, now)

    def _replace_session(self, now: float) -> None:
        if self.closed and now < self.end:
            self.start_session(now)

    async def connect(self, retry: bool = False) -> None:
        """A new connection; with `retry`, tries again every half second while
        the load runs (the server restarting, say), counting each failure."""
        while True:
            try:
                _, conn = await self.loop.create_connection(
                    lambda: Conn(self), self.spec["host"], self.spec["port"])  # type: ignore[arg-type]
            except OSError:
                if not retry or self.stopping:
                    raise
                self.connect_errors += 1
                await asyncio.sleep(0.5)
                continue
            self._free(conn)
            return

    # --- windows -------------------------------------------------------------

    def flush(self, now: float, final: bool = False) -> None:
        """Writes every window that has ended (`final`: every window left, and at
        least one per interval of the run)."""
        last = int((now - self.t0) / self.interval) - 1
        if final:
            last = max(max(self.windows, default=-1), math.ceil(self.seconds / self.interval) - 1)
        while self.flushed <= last:
            w = self.windows.pop(self.flushed, Window())
            lat = percentiles_ms(w.latency)
            line = {"t": round((self.flushed + 1) * self.interval, 3), "done": len(w.latency),
                    "ok": sum(v for k, v in w.statuses.items() if k.startswith("2")),
                    "sent": w.sent, "sessions": w.sessions, "statuses": w.statuses,
                    "bad": w.bad, "steps": w.steps, "queue_max": w.queue_max,
                    "latency_ms": lat}
            self.out.write(json.dumps(line) + "\n")
            self.out.flush()
            if self.spec.get("progress"):
                bad = sum(w.bad.values())
                print(f"  [{line['t']:6.0f} s] {line['done'] / self.interval:7,.0f} req/s  "
                      f"p50 {lat.get('p50', '-')} ms  p99 {lat.get('p99', '-')} ms  "
                      f"non-2xx {bad}  client queue {w.queue_max}", flush=True)
            self.flushed += 1

    # --- the run -------------------------------------------------------------

    async def run(self) -> None:
        spec, seconds = self.spec, self.seconds
        for _ in range(int(spec["connections"])):
            await self.connect()
        self.t0 = time.perf_counter() + 0.05
        self.end = self.t0 + seconds
        # time.monotonic() of t0: the soak's own samples line up with it
        t0_monotonic = time.monotonic() + (self.t0 - time.perf_counter())
        self.out.write(json.dumps({"start": {"t0_monotonic": t0_monotonic}}) + "\n")
        if self.closed:
            while time.perf_counter() < self.t0:
                await asyncio.sleep(0.001)
            for _ in range(int(spec["connections"])):
                self.start_session(self.t0)
            while time.perf_counter() < self.end:
                self.flush(time.perf_counter())
                await asyncio.sleep(0.05)
        else:
            await self._open_loop(float(spec["rate"]) / requests_per_session(self.shares))
        self.stopping = True
        deadline = time.perf_counter() + 30
        while (self.in_flight or self.waiting) and time.perf_counter() < deadline:
            self.flush(time.perf_counter())
            await asyncio.sleep(0.01)
        timeouts = self.in_flight + len(self.waiting)
        if timeouts:
            self.statuses["timeout"] = timeouts
            self.bad["timeout"] = timeouts
        self.flush(time.perf_counter(), final=True)
        every = array("d")
        for values in self.latency.values():
            every.extend(values)
        ok = sum(v for k, v in self.statuses.items() if k.startswith("2"))
        totals = {
            "mode": spec["mode"], "seconds": seconds,
            "elapsed": round(time.perf_counter() - self.t0, 3),
            "rate_asked": spec.get("rate"), "connections": spec["connections"],
            "think_s": self.think, "shares": self.shares,
            "requests": len(every) + timeouts, "ok": ok,
            "ok_per_s": round(self.ok_before_end / seconds, 1),
            "statuses": self.statuses, "bad": self.bad,
            "sessions": {"started": self.started, "finished": self.finished,
                         "failed": self.failed, "cut_at_end": self.cut},
            "reconnects": self.reconnects, "connect_errors": self.connect_errors,
            "latency_ms": percentiles_ms(list(every)),
            "by_step": {step: percentiles_ms(list(v)) | {"count": len(v)}
                        for step, v in self.latency.items()},
        }
        self.out.write(json.dumps({"totals": totals}) + "\n")
        self.out.close()

    async def _open_loop(self, session_rate: float) -> None:
        i = 0
        while True:
            now = time.perf_counter()
            if now >= self.end:
                break
            due_count = int((now - self.t0) * session_rate) + 1 if now >= self.t0 else 0
            while i < due_count:
                self.start_session(self.t0 + i / session_rate)
                i += 1
            while self.later and self.later[0][0] <= now:
                due, _, s = heapq.heappop(self.later)
                self.dispatch(s, due)
            self.flush(now)
            wake = min(self.t0 + i / session_rate, self.later[0][0] if self.later else math.inf)
            # The loop's timers tick in whole milliseconds: a shorter sleep spins.
            await asyncio.sleep(max(0.001, min(wake, self.end) - time.perf_counter()))
        self.cut += len(self.later)
        self.later.clear()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text()) | {"out": sys.argv[2]}

    async def go() -> None:
        await Flow(spec).run()

    try:
        import uvloop
    except ImportError:
        asyncio.run(go())
    else:
        uvloop.run(go())


if __name__ == "__main__":
    main()
