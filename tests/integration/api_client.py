"""Talking to a running API from a test: an httpx client sized for many
requests in flight, and `Api`, which wraps one with the calls most tests
repeat (create a book, upload codes, assign, lock, unlock, redeem) and the
tokens they need."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .names import new_code, new_user
from .servers import ApiServer
from .tokens import bearer


def http_client(base_url: str, timeout: float = 30.0,
                connections: int = 100) -> httpx.AsyncClient:
    # Enough connections for the concurrency tests' requests to be in flight at once.
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits)


@dataclass
class Api:
    """An httpx client on one API server, with the calls most tests repeat."""

    client: httpx.AsyncClient
    server: ApiServer

    async def post(self, path: str, body: Any = None, *, token: str | None = None,
                   headers: Mapping[str, str] | None = None) -> httpx.Response:
        """POST JSON; the token defaults to a back-end's (coupons:write)."""
        sent = {**bearer(token or self.server.writer), **(headers or {})}
        return await self.client.post(path, json=body, headers=sent)

    async def get(self, path: str, *, token: str | None = None,
                  params: Mapping[str, str | int] | None = None) -> httpx.Response:
        return await self.client.get(path, headers=bearer(token or self.server.admin),
                                     params=params)

    async def create_book(self, **fields: Any) -> dict[str, Any]:
        body = {"name": f"book {uuid.uuid4().hex[:8]}", **fields}
        response = await self.post("/coupons", body, token=self.server.admin)
        assert response.status_code == 201, response.text
        book: dict[str, Any] = response.json()
        return book

    async def upload(self, book_id: str, codes: list[Any]) -> dict[str, Any]:
        response = await self.post("/coupons/codes", {"couponBookId": book_id, "codes": codes},
                                   token=self.server.admin)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def book_with_codes(self, count: int, **fields: Any) -> tuple[dict[str, Any], list[str]]:
        """A new book holding `count` fresh codes of known names."""
        book = await self.create_book(**fields)
        codes = [new_code() for _ in range(count)]
        if codes:
            assert (await self.upload(book["id"], codes))["added"] == count
        return book, codes

    async def assign(self, book_id: str, user_id: str, *, token: str | None = None,
                     headers: Mapping[str, str] | None = None) -> httpx.Response:
        return await self.post("/coupons/assign", {"userId": user_id, "couponBookId": book_id},
                               token=token, headers=headers)

    async def assign_code(self, code: str, user_id: str, *,
                          token: str | None = None) -> httpx.Response:
        return await self.post(f"/coupons/assign/{code}", {"userId": user_id}, token=token)

    async def lock(self, code: str, user_id: str, ttl: int | None = None, *,
                   token: str | None = None,
                   headers: Mapping[str, str] | None = None) -> httpx.Response:
        body: dict[str, Any] = {"userId": user_id}
        if ttl is not None:
            body["ttlSeconds"] = ttl
        return await self.post(f"/coupons/lock/{code}", body, token=token, headers=headers)

    async def unlock(self, code: str, user_id: str, lock_token: str, *,
                     token: str | None = None) -> httpx.Response:
        return await self.post(f"/coupons/unlock/{code}",
                               {"userId": user_id, "lockToken": lock_token}, token=token)

    async def redeem(self, code: str, user_id: str, lock_token: str | None = None, *,
                     token: str | None = None,
                     headers: Mapping[str, str] | None = None) -> httpx.Response:
        body: dict[str, Any] = {"userId": user_id}
        if lock_token is not None:
            body["lockToken"] = lock_token
        return await self.post(f"/coupons/redeem/{code}", body, token=token, headers=headers)

    async def owned_code(self, **fields: Any) -> tuple[dict[str, Any], str, str]:
        """A new book with one code, assigned to a new user: (book, code, user)."""
        book, [code] = await self.book_with_codes(1, **fields)
        user = new_user()
        response = await self.assign_code(code, user)
        assert response.status_code == 200, response.text
        return book, code, user

