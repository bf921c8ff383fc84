"""A TCP proxy that passes on a server's close of a connection late.

Bytes go through at once in both directions; only the server's end of a
connection (EOF or reset) reaches the client `close_delay` seconds later. A
server that sends its last message and then hangs up (a PostgreSQL backend
terminated by a crash or a shutdown sends a FATAL error, then closes) is then
seen by the client as two events well apart, as across a busy network, rather
than usually in one read.
"""

from __future__ import annotations

import asyncio
import contextlib


class SlowCloseProxy:
    def __init__(self, upstream_port: int, close_delay: float) -> None:
        self.upstream_port = upstream_port
        self.close_delay = close_delay
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> SlowCloseProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, client_r: asyncio.StreamReader,
                     client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()  # the server is down: refuse at once
            return
        upstream = asyncio.create_task(_copy(client_r, server_w))
        try:
            await _copy(server_r, client_w, close=False)
            await asyncio.sleep(self.close_delay)
        finally:
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upstream
            for writer in (client_w, server_w):
                writer.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                close: bool = True) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        if close:
            writer.close()
