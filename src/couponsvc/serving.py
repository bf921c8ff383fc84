"""uvicorn's HTTP protocol with deadlines for the request head and body.

uvicorn times out only idle keep-alive connections: a client that opens a
connection and sends its headers (or its body) a byte at a time holds a
connection and a request slot for as long as it likes (slowloris). This
protocol gives each request a deadline for its head, counted from the
connection opening or the first byte of the request, then one for its body,
counted from the end of the head. A request that misses one gets
408 problem+json and the connection is closed; a connection on which no
request has begun is closed without an answer (there is nobody to answer, and
a client's pooled connection must not find an unasked-for response). One timer
per request, no work per byte: the hot path does not pay for it.

It also answers what uvicorn's own protocol gets wrong for this service:
- a request uvicorn's parser refuses (bytes no request line or header may
  hold, bad framing) is a 400 problem+json instead of uvicorn's text/plain;
- a request head over MAX_HEAD_BYTES is a 431 problem+json (httptools sets
  no limit: a client could send megabytes of headers);
- when the connection is lost, every request of it still being answered is
  marked disconnected, not only the last one read: uvicorn marks only that
  one, and the answer to an earlier pipelined request was then written to a
  closed socket (a traceback in the log per connection).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from couponsvc.errors import PROBLEM_BASE, PROBLEM_MEDIA_TYPE, Problem, encode_problem
from couponsvc.settings import Settings

# The request line and headers together (a token is a few hundred bytes).
MAX_HEAD_BYTES = 64 * 1024


@functools.cache
def _deadlines() -> tuple[float, float]:
    # Read once per process from the environment, like the app itself: uvicorn
    # builds the protocol (in each worker) and passes it no settings of ours.
    settings = Settings.from_env()
    return settings.header_timeout_seconds, settings.body_timeout_seconds


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """`http=DeadlineHttpToolsProtocol` in uvicorn's options (see cli.py)."""

    _deadline: asyncio.TimerHandle | None = None
    _receiving = False  # a request has begun and not yet fully arrived
    _head_bytes = 0
    _head_too_large = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._unanswered: list[RequestResponseCycle] = []
        self._arm(_deadlines()[0], "the request head")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._receiving = True
        self._head_bytes = 0
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm(_deadlines()[0], "the request head")

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._head_too_large = True
            # httptools stops parsing and uvicorn answers send_400_response.
            raise ValueError("request head too large")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._unanswered = [c for c in self._unanswered if not c.response_complete]
        self._unanswered.append(self.cycle)
        self._arm(_deadlines()[1], "the request body")

    def on_message_complete(self) -> None:
        self._receiving = False
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        for cycle in self._unanswered:
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            problem = _problem(431, "Request Header Fields Too Large", "request-header-too-large",
                               "Request head too large",
                               f"the request line and headers exceed {MAX_HEAD_BYTES} bytes")
        else:
            problem = _problem(400, "Bad Request", "invalid-request", "Invalid request",
                               "not a valid HTTP/1.1 request (its line, a header or its framing)")
        self.transport.write(problem)
        self.transport.close()

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, seconds, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, seconds: float, what: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        answered = self.cycle is not None and self.cycle.response_started
        if self._receiving and not answered:
            self.transport.write(_timeout_response(f"{what} did not arrive within {seconds:g} s"))
        # The handler waiting for the body sees a disconnect and stops.
        self.transport.close()


def _timeout_response(detail: str) -> bytes:
    return _problem(408, "Request Timeout", "request-timeout", "Request timeout", detail)


def _problem(status: int, reason: str, slug: str, title: str, detail: str) -> bytes:
    """A whole response that closes the connection, written below the app."""
    body = encode_problem(Problem(type=PROBLEM_BASE + slug, title=title, status=status,
                                  detail=detail))
    head: list[Any] = [
        f"HTTP/1.1 {status} {reason}\r\n".encode(),
        b"content-type: " + PROBLEM_MEDIA_TYPE.encode() + b"\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body
