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
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from couponsvc.errors import PROBLEM_BASE, PROBLEM_MEDIA_TYPE, Problem, encode_problem
from couponsvc.settings import Settings


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

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(_deadlines()[0], "the request head")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._receiving = True
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm(_deadlines()[0], "the request head")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(_deadlines()[1], "the request body")

    def on_message_complete(self) -> None:
        self._receiving = False
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

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
    body = encode_problem(Problem(type=PROBLEM_BASE + "request-timeout",
                                  title="Request timeout", status=408, detail=detail))
    head: list[Any] = [
        b"HTTP/1.1 408 Request Timeout\r\n",
        b"content-type: " + PROBLEM_MEDIA_TYPE.encode() + b"\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body
