"""HTTP as a state-machine driver: the same operations as requests to a
running `couponsvc serve`, through a synchronous httpx client."""

from __future__ import annotations

import httpx

from couponsvc.auth import WRITE

from .model_drivers import (
    Json,
    Page,
    Result,
    assign_code_request,
    assign_random_request,
    redeem_request,
)
from .model_types import Caller
from .problems import PROBLEM_MEDIA_TYPE
from .servers import ApiServer
from .tokens import bearer


class HttpDriver:
    """The API's keys have the prefix `cb`; every machine names its own books,
    codes and users, so examples share the server without meeting."""

    prefix = "cb"

    def __init__(self, client: httpx.Client, server: ApiServer) -> None:
        self._client = client
        self._server = server
        self._admin = server.admin
        self._tokens: dict[Caller, str] = {}

    def close(self) -> None:
        pass

    def _token(self, caller: Caller) -> str:
        if caller not in self._tokens:
            scope = WRITE if caller.acts_for_anyone else None
            self._tokens[caller] = self._server.token(caller.sub, scope)
        return self._tokens[caller]

    def _post(self, path: str, body: Json, token: str, key: str | None = None) -> Result:
        headers = bearer(token) | ({"Idempotency-Key": key} if key is not None else {})
        return _result(self._client.post(path, json=body, headers=headers))

    def create_book(self, fields: Json) -> Json:
        response = self._client.post("/coupons", json=fields, headers=bearer(self._admin))
        assert response.status_code == 201, response.text
        book: Json = response.json()
        return book

    def book(self, book: str) -> Json:
        response = self._client.get(f"/coupons/{book}", headers=bearer(self._admin))
        assert response.status_code == 200, response.text
        view: Json = response.json()
        return view

    def upload(self, book: str, codes: list[str]) -> Result:
        return self._post("/coupons/codes", {"couponBookId": book, "codes": codes}, self._admin)

    def generate(self, book: str, pattern: str, count: int) -> Result:
        body = {"couponBookId": book, "generate": {"pattern": pattern, "count": count}}
        return self._post("/coupons/codes", body, self._admin)

    def assign_random(self, caller: Caller, book: str, user: str, key: str | None) -> Result:
        return self._post(*assign_random_request(book, user), self._token(caller), key)

    def assign_code(self, caller: Caller, code: str, user: str, book: str | None,
                    key: str | None) -> Result:
        return self._post(*assign_code_request(code, user, book), self._token(caller), key)

    def lock(self, caller: Caller, code: str, user: str, ttl: int | None) -> Result:
        body = {"userId": user} if ttl is None else {"userId": user, "ttlSeconds": ttl}
        return self._post(f"/coupons/lock/{code}", body, self._token(caller))

    def unlock(self, caller: Caller, code: str, user: str, token: str) -> Result:
        return self._post(f"/coupons/unlock/{code}", {"userId": user, "lockToken": token},
                          self._token(caller))

    def redeem(self, caller: Caller, code: str, user: str, token: str | None,
               key: str | None) -> Result:
        return self._post(*redeem_request(code, user, token), self._token(caller), key)

    def list_page(self, caller: Caller, user: str, book: str | None, limit: int,
                  cursor: str | None) -> Page:
        params: dict[str, str | int] = {"limit": limit}
        if book is not None:
            params["couponBookId"] = book
        if cursor is not None:
            params["cursor"] = cursor
        response = self._client.get(f"/users/{user}/coupons", params=params,
                                    headers=bearer(self._token(caller)))
        link = response.links.get("next")
        next_cursor = httpx.URL(link["url"]).params.get("cursor") if link else None
        return Page(_result(response), next_cursor)


def _result(response: httpx.Response) -> Result:
    if response.is_success:
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        return Result(response.status_code, None, response.json(), replayed)
    media = response.headers.get("content-type", "").split(";")[0].strip()
    assert media == PROBLEM_MEDIA_TYPE, (response.status_code, response.text)
    problem = response.json()
    assert problem["status"] == response.status_code, problem
    return Result(response.status_code, str(problem["type"]).rsplit("/", 1)[-1], problem)
