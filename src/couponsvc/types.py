"""Type aliases shared across modules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias

from starlette.requests import Request
from starlette.responses import Response

ExceptionHandler: TypeAlias = Callable[[Request, Exception], Awaitable[Response]]
Endpoint: TypeAlias = Callable[[Request], Awaitable[Response]]
# What a Lua script returns: nested lists of str and int.
ScriptReply: TypeAlias = list[str | int]

