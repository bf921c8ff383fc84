"""The Lua scripts: read from the package, registered once, called by SHA.

Each operation is one file in `lua/`; `_prelude.lua` (shared helpers) is
prepended to every one of them. redis-py's `AsyncScript` calls EVALSHA and, on
NOSCRIPT (a restarted or failed-over Redis), loads the script and retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import cache
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

from limits.aio.storage.redis.bridge import RedisBridge
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from couponsvc.coalesce import Coalescer, CommandPipe
from couponsvc.types import ScriptReply

PRELUDE = "_prelude"
# Scripts that may change state (see Replicas in coalesce.py).
MUTATING = frozenset({"create_book", "claim_codes", "add_codes", "assign_random", "assign_code",
                      "lock", "unlock", "redeem", "claim_create",
                      "settle_create", "expire_locks"})
NAMES = (
    "create_book",
    "claim_codes",
    "add_codes",
    "assign_random",
    "assign_code",
    "lock",
    "unlock",
    "redeem",
    "read_book",
    "list_user_codes",
    "claim_create",
    "settle_create",
    "expire_locks",  # run by the writer
)
# The `limits` library's sliding-window hit, its own text, called through the
# hot path's pipe (ratelimit.py) rather than by the library: one redis-py call
# per assign cost about as much API time as the assign itself. Not MUTATING: a
# counter a failover loses lets a caller a few more tries, and waiting for
# replicas would hold up every counted assign.
LIMITS_SLIDING_WINDOW_HIT = "limits_acquire_sliding_window"
FOREIGN = {LIMITS_SLIDING_WINDOW_HIT: RedisBridge.SCRIPT_ACQUIRE_SLIDING_WINDOW}


def _lua_dir() -> Traversable:
    # In a wheel the scripts are couponsvc/lua/; in a source checkout (an
    # editable install) they are the repository's top-level lua/ folder.
    packaged = resources.files("couponsvc") / "lua"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "lua"


@cache
def source(name: str) -> str:
    """The full text sent to Redis for one script: prelude, then the operation."""
    folder = _lua_dir()
    prelude = (folder / f"{PRELUDE}.lua").read_text()
    return prelude + "\n" + (folder / f"{name}.lua").read_text()


class Scripts:
    """All scripts bound to one client; call them as `await scripts.run(name, keys, args)`.

    Calls go through the auto-pipelining `Coalescer`; a NOSCRIPT reply (a
    restarted or failed-over Redis) reloads the script and retries once.
    Bulk loads (`run_many`) may use a pipe of their own (`bulk`): their
    hundreds of calls then do not queue in front of checkout commands, and it
    can wait longer for a reply than the checkout path does.
    """

    def __init__(self, redis: Redis, coalescer: CommandPipe | None = None,
                 bulk: CommandPipe | None = None) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(source(name)) for name in NAMES
        } | {name: redis.register_script(text) for name, text in FOREIGN.items()}
        self._redis = redis
        self._reloading: dict[str, asyncio.Future[Any]] = {}
        self.coalescer: CommandPipe = coalescer or Coalescer(redis)
        self.bulk: CommandPipe = bulk or self.coalescer

    async def load(self) -> None:
        """Registers every script with the server (start-up, not the hot path)."""
        for script in self._scripts.values():
            script.sha = await self._redis.script_load(script.script)

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Any] = (),
                  pipe: CommandPipe | None = None) -> ScriptReply:
        script = self._scripts[name]
        durable = name in MUTATING
        pipe = pipe or self.coalescer
        try:
            reply: ScriptReply = await pipe.submit(
                "EVALSHA", script.sha, len(keys), *keys, *args, durable=durable)
        except NoScriptError:
            await self._reload(name)
            reply = await pipe.execute(
                "EVALSHA", script.sha, len(keys), *keys, *args, durable=durable)
        return reply

    async def _reload(self, name: str) -> None:
        """Loads a script the server lost (a restart, a failover): once, however
        many calls found it missing at the same moment. One load each took
        a pooled connection each, and a burst ran the pool dry (503s)."""
        loading = self._reloading.get(name)
        if loading is None:
            loading = asyncio.ensure_future(self._redis.script_load(self._scripts[name].script))
            self._reloading[name] = loading
            loading.add_done_callback(lambda done: self._forget_load(name, done))
        # Shielded: a caller that gives up does not cancel the others' load.
        self._scripts[name].sha = await asyncio.shield(loading)

    def _forget_load(self, name: str, done: asyncio.Future[Any]) -> None:
        """Drops a finished load, and reads its outcome: when every caller gave
        up waiting, a failure would be left unread (asyncio logs that)."""
        self._reloading.pop(name, None)
        if not done.cancelled():
            done.exception()

    async def run_many(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """Runs one script many times, pipelined on the bulk pipe (bulk loads);
        replies in call order."""
        return list(await asyncio.gather(
            *(self.run(name, keys, args, self.bulk) for keys, args in calls)))
