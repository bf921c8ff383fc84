"""The service layer as a state-machine driver: Books and Coupons built as
app.py's lifespan builds them (without Postgres), over a real Redis, on an
event loop the driver owns, since hypothesis runs rules synchronously."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Coroutine
from typing import Any

import msgspec

from couponsvc import errors
from couponsvc.app import connect_redis
from couponsvc.auth import WRITE, Principal
from couponsvc.books import Books
from couponsvc.coalesce import Coalescer, CommandPipe
from couponsvc.coupons import Coupons, Idempotency
from couponsvc.http import fingerprint
from couponsvc.resp import RespPipeline
from couponsvc.schemas import AssignCode, AssignRandom, Base, CreateBook, Redeem
from couponsvc.scripts import Scripts
from couponsvc.settings import Settings
from couponsvc.store import Store

from .model_drivers import (
    Json,
    Page,
    Result,
    assign_code_request,
    assign_random_request,
    redeem_request,
)
from .model_types import Caller


class ServiceDriver:
    """A fresh key prefix per instance keeps examples apart on one Redis."""

    def __init__(self, redis_url: str, hot_path_client: str = "resp") -> None:
        self.prefix = f"sm{uuid.uuid4().hex[:12]}"
        self.settings = Settings(redis_url=redis_url, env="dev", key_prefix=self.prefix,
                                 hot_path_client=hot_path_client, rate_limits=False)
        self._runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)
        try:
            self._runner.run(self._open())
        except BaseException:
            self._runner.close()
            raise

    async def _open(self) -> None:
        settings = self.settings
        self._redis = connect_redis(settings)
        self._pipe: CommandPipe = \
            RespPipeline(settings.redis_url, settings.redis_timeout_seconds) \
            if settings.hot_path_client == "resp" else Coalescer(self._redis)
        scripts = Scripts(self._redis, self._pipe)
        await scripts.load()
        store = Store(self._redis, scripts, settings)
        self._books = Books(store, records=None)
        self._coupons = Coupons(store)

    def close(self) -> None:
        async def shut() -> None:
            if isinstance(self._pipe, RespPipeline):
                await self._pipe.aclose()
            await self._redis.aclose()

        try:
            self._runner.run(shut())
        finally:
            self._runner.close()

    def _call(self, action: Coroutine[Any, Any, tuple[object, bool]]) -> Result:
        try:
            value, replayed = self._runner.run(action)
        except errors.ServiceError as exc:
            return Result(exc.status, exc.slug, msgspec.to_builtins(exc.problem()))
        return Result(200, None, msgspec.to_builtins(value), replayed)

    @staticmethod
    def _principal(caller: Caller) -> Principal:
        return Principal(caller.sub, frozenset({WRITE}) if caller.acts_for_anyone else frozenset())

    @staticmethod
    def _idem(caller: Caller, key: str | None, path: str, body: Json,
              kind: type[Base]) -> Idempotency | None:
        if key is None:
            return None
        # As the API does: the body decoded into its request type.
        return Idempotency(caller.sub, key, fingerprint("POST", path, msgspec.convert(body, kind)))

    def create_book(self, fields: Json) -> Json:
        request = msgspec.json.decode(json.dumps(fields), type=CreateBook)
        book: Json = msgspec.to_builtins(self._runner.run(self._books.create(request)))
        return book

    def book(self, book: str) -> Json:
        view: Json = msgspec.to_builtins(self._runner.run(self._books.get(book)))
        return view

    def upload(self, book: str, codes: list[str]) -> Result:
        async def run() -> tuple[object, bool]:
            return await self._books.upload(book, codes), False
        return self._call(run())

    def generate(self, book: str, pattern: str, count: int) -> Result:
        async def run() -> tuple[object, bool]:
            return await self._books.generate(book, pattern, count), False
        return self._call(run())

    def assign_random(self, caller: Caller, book: str, user: str, key: str | None) -> Result:
        idem = self._idem(caller, key, *assign_random_request(book, user), AssignRandom)

        async def run() -> tuple[object, bool]:
            out = await self._coupons.assign_random(self._principal(caller), book, user, idem)
            return out.coupon, out.replayed
        return self._call(run())

    def assign_code(self, caller: Caller, code: str, user: str, book: str | None,
                    key: str | None) -> Result:
        idem = self._idem(caller, key, *assign_code_request(code, user, book), AssignCode)

        async def run() -> tuple[object, bool]:
            out = await self._coupons.assign_code(self._principal(caller), code, user, book,
                                                  idem)
            return out.coupon, out.replayed
        return self._call(run())

    def lock(self, caller: Caller, code: str, user: str, ttl: int | None) -> Result:
        async def run() -> tuple[object, bool]:
            return await self._coupons.lock(self._principal(caller), code, user, ttl)
        return self._call(run())

    def unlock(self, caller: Caller, code: str, user: str, token: str) -> Result:
        async def run() -> tuple[object, bool]:
            return await self._coupons.unlock(self._principal(caller), code, user, token), False
        return self._call(run())

    def redeem(self, caller: Caller, code: str, user: str, token: str | None,
               key: str | None) -> Result:
        idem = self._idem(caller, key, *redeem_request(code, user, token), Redeem)

        async def run() -> tuple[object, bool]:
            return await self._coupons.redeem(self._principal(caller), code, user, token, idem)
        return self._call(run())

    def list_page(self, caller: Caller, user: str, book: str | None, limit: int,
                  cursor: str | None) -> Page:
        cursors: list[str | None] = []

        async def run() -> tuple[object, bool]:
            page = await self._coupons.list_for_user(self._principal(caller), user, book,
                                                     limit, cursor)
            cursors.append(page.next_cursor)
            return page.coupons, False
        result = self._call(run())
        return Page(result, cursors[0] if cursors else None)
