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
per request and a byte count per read: the hot path hardly pays for it.

It also answers what uvicorn's own protocol gets wrong for this service:
- a request uvicorn's parser refuses (bytes no request line or header may
  hold, bad framing) is a 400 problem+json instead of uvicorn's text/plain;
- a request head over MAX_HEAD_BYTES (about: counted per read) is a 431
  problem+json (httptools sets no limit: a client could send megabytes of
  headers, and one endless header line costs a copy of itself per read);
- either comes after the answers to the requests read before it on the
  connection, as HTTP/1.1 orders answers (uvicorn wrote its 400 at once, in
  place of the answer still being made);
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
# How long a refused request's connection still takes (and drops) input.
REFUSAL_LINGER_SECONDS = 2.0


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
    _in_head = True  # what arrives next is (part of) a request's head
    _head_bytes = 0  # bytes received since that head began, about
    _refusal: bytes | None = None  # the answer that ends this connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # This connection's requests whose answer may not be complete yet,
        # oldest first (answers go out in order).
        self._unanswered: list[RequestResponseCycle] = []
        self._arm(_deadlines()[0], "the request head")

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # refused: nothing more is read
        if self._in_head:
            # Counted here, not per header: httptools hands a header over only
            # once its line ends, and grows an unfinished one chunk by chunk.
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(_HEAD_TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._receiving = True
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm(_deadlines()[0], "the request head")

    def on_headers_complete(self) -> None:
        # The bytes read may hold a body too: only then is the head measured.
        if self._head_bytes > MAX_HEAD_BYTES and self._head_size() > MAX_HEAD_BYTES:
            self._refuse(_HEAD_TOO_LARGE)
            raise ValueError("request head too large")  # stops the parser
        super().on_headers_complete()
        self._in_head = False
        unanswered = self._unanswered
        while unanswered and unanswered[0].response_complete:
            unanswered.pop(0)
        unanswered.append(self.cycle)
        self._arm(_deadlines()[1], "the request body")

    def on_message_complete(self) -> None:
        self._receiving = False
        self._in_head, self._head_bytes = True, 0
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal is not None:
            self._send_refusal_when_answered()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        for cycle in self._unanswered:
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what its parser refuses, as a problem."""
        self._refuse(_problem(400, "Bad Request", "invalid-request", "Invalid request",
                              "not a valid HTTP/1.1 request (its line, a header or its framing)"))

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _refuse(self, problem: bytes) -> None:
        """Answers `problem` and closes the connection, once the requests read
        before the refused one have had their answers."""
        if self._refusal is None:
            self._refusal = problem
            self._send_refusal_when_answered()

    def _send_refusal_when_answered(self) -> None:
        if self._refusal is None or self.transport.is_closing():
            return
        if self.pipeline or any(not cycle.response_complete for cycle in self._unanswered):
            return  # on_response_complete calls again
        self._disarm()  # no 408 after this answer
        self.transport.write(self._refusal)
        # Closed at once with the client still sending, the socket would reset
        # and the client could lose the answer: stop writing, keep reading
        # (and dropping) a little while, then close.
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(REFUSAL_LINGER_SECONDS, self.transport.close)
        else:
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


_HEAD_TOO_LARGE = _problem(431, "Request Header Fields Too Large", "request-header-too-large",
                           "Request head too large",
                           f"the request line and headers exceed {MAX_HEAD_BYTES} bytes")
