"""A small pipelined RESP client for the hot path (one Redis, not a cluster).

Why not redis-py here: its asyncio client spends more time per command than
Redis spends running our scripts (packing each argument, awaiting each reply,
a pool checkout per call). This client keeps one connection, writes every
command queued during one event-loop turn in a single `write`, and matches
replies to callers in order as hiredis parses them: the auto-pipelining that
Node's ioredis offers. Everything else (admin paths, the writer, cluster mode)
stays on redis-py, and errors are redis-py's exception classes, so callers
cannot tell the two apart.

Failure handling: when commands are waiting and no reply has arrived for
`timeout` seconds, the connection is aborted and every command waiting on it
fails with `TimeoutError` (a long pipelined bulk load that keeps answering
does not time out); a
dropped connection fails them with `ConnectionError`. The next command opens
a new connection (and re-authenticates and re-selects the database), so a
restarted Redis is picked up by itself. Errors are redis-py's classes:
`redis.exceptions.ConnectionError` and `TimeoutError` map to 503 like any
other Redis outage.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, cast
from urllib.parse import urlparse

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from couponsvc.coalesce import Batcher, Replicas, ReplicationLagging

MAX_BATCH = 512
# Commands of one batch: (RESP bytes, durable) and the caller's future.
Batch = list[tuple[tuple[bytes, bool], asyncio.Future[Any]]]


def encode(args: tuple[Any, ...]) -> bytes:
    """One command in RESP: an array of bulk strings (hiredis packs it in C,
    about three times faster than building it in Python)."""
    packed: bytes = hiredis.pack_command(args)
    return packed


def _answered(future: asyncio.Future[Any]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _error(message: str) -> RedisError:
    """The redis-py exception for an error reply (NOSCRIPT -> NoScriptError, ...)."""
    error: RedisError = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    return error


class _Connection(asyncio.Protocol):
    """One socket: writes batches, hands replies to the waiting futures in order."""

    def __init__(self, timeout: float) -> None:
        self._reader = hiredis.Reader(encoding="utf-8")
        self._waiting: deque[asyncio.Future[Any]] = deque()
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport: Any = None
        self._timeout = timeout
        self._timed_out = False
        self._last_reply = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def send(self, payload: bytes, futures: list[asyncio.Future[Any]]) -> None:
        assert self._transport is not None
        if self.closed:  # lost between the caller's check and now
            for future in futures:
                if not future.done():
                    future.set_exception(RedisConnectionError("connection to Redis lost"))
            return
        if not self._waiting:
            self._last_reply = asyncio.get_running_loop().time()
        self._waiting.extend(futures)
        self._transport.write(payload)
        if self._watchdog is None:
            self._arm(self._timeout)

    def _arm(self, delay: float) -> None:
        self._watchdog = asyncio.get_running_loop().call_later(delay, self._check)

    def _check(self) -> None:
        """Aborts when replies are owed and none has come for `timeout` seconds."""
        self._watchdog = None
        if self.closed or not self._waiting:
            return
        silent = asyncio.get_running_loop().time() - self._last_reply
        if silent < self._timeout:
            self._arm(self._timeout - silent)
            return
        self._timed_out = True
        self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._last_reply = asyncio.get_running_loop().time()
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            future = self._waiting.popleft()
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_error(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        error: Exception = (RedisTimeoutError("Redis did not answer in time") if self._timed_out
                            else RedisConnectionError(f"connection to Redis lost: {exc}"))
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.close()


class RespPipeline(Batcher[tuple[bytes, bool]]):
    """`submit`/`execute` like `Coalescer`, over one auto-pipelined connection."""

    def __init__(self, url: str, timeout: float = 2.0, max_batch: int = MAX_BATCH,
                 replicas: Replicas | None = None) -> None:
        super().__init__(max_batch)
        self._replicas = replicas
        self._known_replicas: int | None = None  # from the last ROLE reply
        self._url = url
        self._options: dict[str, Any] = dict(parse_url(url))
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._unsent: list[Batch] = []  # waiting for a connection, oldest first

    async def execute(self, *args: Any, durable: bool = False, **_options: Any) -> Any:
        """Runs one command in the next batch; replies are raw (no redis-py parsing)."""
        return await self.submit(*args, durable=durable)

    def submit(self, *args: Any, durable: bool = False, **_options: Any) -> asyncio.Future[Any]:
        """Queues a command now; one connection runs them in the order queued."""
        return self._enqueue((encode(args), durable and self._replicas is not None))

    def _send_now(self, batch: Batch) -> bool:
        """Writes the batch at once while connected: a full batch reaches Redis
        while this turn's other requests are still being handled, so Redis and
        the API work side by side instead of taking turns. Otherwise the batch
        waits, in order, behind those already waiting for a connection; the
        first of them has `_send` open one (in a task)."""
        connection = self._connection
        if connection is not None and not connection.closed and not self._unsent:
            self._write(connection, batch)
            return True
        self._unsent.append(batch)
        return len(self._unsent) > 1

    async def _send(self, _first: Batch) -> None:
        """Opens a connection, then writes every batch that waited for it."""
        try:
            connection = await self._connected()
        except BaseException as exc:
            # Whatever stopped it (a refusal, a timeout, a bug, cancellation),
            # the batches waiting for this connection fail now: left waiting,
            # every later batch would queue behind them for good.
            error = exc if isinstance(exc, RedisError) \
                else RedisConnectionError(f"cannot connect to Redis: {exc!r}")
            waiting, self._unsent = self._unsent, []
            for batch in waiting:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        waiting, self._unsent = self._unsent, []
        for batch in waiting:
            self._write(connection, batch)

    def _write(self, connection: _Connection, batch: Batch) -> None:
        loop = asyncio.get_running_loop()
        payloads = [payload for (payload, _), _ in batch]
        receivers: list[asyncio.Future[Any]] = []
        held: list[tuple[asyncio.Future[Any], asyncio.Future[Any]]] = []
        for (_, durable), future in batch:
            if durable:  # its reply waits for the replicas' confirmation
                inner: asyncio.Future[Any] = loop.create_future()
                held.append((inner, future))
                receivers.append(inner)
            else:
                receivers.append(future)
        if held and self._replicas is not None:
            replicas = self._replicas
            acks: asyncio.Future[Any] = loop.create_future()
            role: asyncio.Future[Any] = loop.create_future()
            role.add_done_callback(lambda _: self._settle(acks, role, held, replicas))
            payloads += [encode(c) for c in replicas.commands(self._known_replicas)]
            receivers += [acks, role]
        connection.send(b"".join(payloads), receivers)

    def _settle(self, acks: asyncio.Future[Any], role: asyncio.Future[Any],
                held: list[tuple[asyncio.Future[Any], asyncio.Future[Any]]],
                replicas: Replicas) -> None:
        """Hands the held replies over once WAIT and ROLE have answered (after them)."""
        answered = [_answered(acks), _answered(role)]  # both read: no unretrieved errors
        confirmed = all(answered) and replicas.confirmed(acks.result(), role.result())
        if answered[1] and (count := Replicas.connected(role.result())) is not None:
            self._known_replicas = count
        for inner, outer in held:
            if outer.done():
                continue
            if not inner.done() or inner.cancelled():
                outer.set_exception(RedisConnectionError("connection to Redis lost"))
            elif inner.exception() is not None:
                outer.set_exception(cast(BaseException, inner.exception()))
            elif not confirmed:
                outer.set_exception(ReplicationLagging(
                    "the change was not confirmed by enough replicas in time"))
            else:
                outer.set_result(inner.result())

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.closed:
            return connection
        async with self._connecting:
            if self._connection is None or self._connection.closed:
                self._connection = await asyncio.wait_for(self._open(), self._timeout)
            return self._connection

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = _Connection(self._timeout)
        options = self._options
        if "path" in options:
            await loop.create_unix_connection(lambda: connection, options["path"])
        else:
            tls = ssl.create_default_context() if urlparse(self._url).scheme == "rediss" else None
            await loop.create_connection(lambda: connection, options.get("host", "localhost"),
                                         options.get("port", 6379), ssl=tls)
        handshake: list[tuple[Any, ...]] = []
        if options.get("password"):
            handshake.append(("AUTH", *([options["username"]] if options.get("username") else []),
                              options["password"]))
        if options.get("db"):
            handshake.append(("SELECT", options["db"]))
        if handshake:
            futures = [loop.create_future() for _ in handshake]
            connection.send(b"".join(encode(c) for c in handshake), futures)
            await asyncio.gather(*futures)
        return connection

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
