"""The OpenAPI 3.1 document, generated from the route table and msgspec types."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from couponsvc import __version__
from couponsvc.errors import PROBLEM_MEDIA_TYPE, Problem
from couponsvc.http import IDEMPOTENCY_KEY
from couponsvc.routes import REPLAYED_HEADER, Operation
from couponsvc.schemas import END, UUID_PATTERN, BookId, Code, UserId

REF = "#/components/schemas/{name}"
ERROR_DESCRIPTIONS = {
    400: "Invalid request: malformed JSON, wrong types, unknown fields, bad values",
    401: "Missing, malformed, expired or wrongly signed bearer token",
    403: "The token may not do this",
    404: "Unknown book or code (or, for an end user, a code that is not theirs)",
    408: "The request's head or body did not arrive in time; the connection is closed",
    409: "Conflicts with the current state (exhausted, limit reached, outside validity, ...)",
    413: "Request body too large",
    415: "The body is not JSON",
    423: "The code is locked, or has no redemptions left",
    429: "Too many assigns or failed code look-ups; retry after the Retry-After delay",
    503: "Storage unavailable; retry after the Retry-After delay",
}
# serving.py's deadlines apply before a request reaches its route: any route.
ON_EVERY_REQUEST = (408,)
# The response headers the handlers and errors.py send, by name.
HEADERS: dict[str, dict[str, Any]] = {
    "Location": {"description": "The new book's path", "required": True,
                 "schema": {"type": "string", "pattern": "^/coupons/" + UUID_PATTERN[1:]}},
    "Link": {"description": "The next page, if there is one: <url>; rel=\"next\", the URL "
                            "relative to this request's",
             "schema": {"type": "string", "pattern": '^<[^>]+>; rel="next"$'}},
    REPLAYED_HEADER: {"description": "Sent when this is the stored answer to an earlier "
                                     "request with the same Idempotency-Key",
                      "schema": {"type": "string", "enum": ["true"]}},
    "WWW-Authenticate": {"description": "The bearer scheme; invalid_token when a token was "
                                        "sent (RFC 6750)", "required": True,
                         "schema": {"type": "string",
                                    "pattern": '^Bearer( error="invalid_token")?$'}},
    # Not on every 423: a code with no redemptions left has nothing to wait for.
    "Retry-After": {"description": "Seconds to wait before retrying",
                    "schema": {"type": "integer"}},
}
# Path parameters by name: the same rules the handlers check.
PATH_PARAMETERS: dict[str, Any] = {"code": Code, "couponBookId": BookId, "userId": UserId}


def _link(operation_id: str, code: str | None = None, **body: str) -> dict[str, Any]:
    """A link to `operation_id`: `code` feeds its {code} path parameter, `body`
    the named fields of its request body (runtime expressions inside the body
    object, as schemathesis reads them; the other fields are the caller's)."""
    link: dict[str, Any] = {"operationId": operation_id}
    if code is not None:
        link["parameters"] = {"path.code": code}
    if body:
        link["requestBody"] = body
    return link


_BOOK = {"couponBookId": "$response.body#/id"}
_CODE = "$response.body#/code"
_OWNER = "$response.body#/assignedTo"
# From an answer that names a code and its owner.
_CODE_LINKS = {
    "LockIt": _link("lockCoupon", _CODE, userId=_OWNER),
    "RedeemIt": _link("redeemCoupon", _CODE, userId=_OWNER),
    "ListTheOwnersCodes": {"operationId": "getUserCoupons",
                           "parameters": {"path.userId": _OWNER}},
}
# OpenAPI links by operation and status: how one answer feeds the next request.
LINKS: dict[tuple[str, int], dict[str, dict[str, Any]]] = {
    ("createCouponBook", 201): {
        "ReadTheBook": {"operationId": "getCouponBook",
                        "parameters": {"path.couponBookId": "$response.body#/id"}},
        "AddCodes": _link("uploadCouponCodes", **_BOOK),
        "AssignFromTheBook": _link("assignRandomCoupon", **_BOOK),
    },
    ("uploadCouponCodes", 200): {
        "AssignFromTheBook": _link("assignRandomCoupon",
                                   couponBookId="$response.body#/couponBookId"),
        "AssignAGeneratedCode": _link("assignSpecificCoupon", "$response.body#/codes/0"),
    },
    ("assignRandomCoupon", 200): _CODE_LINKS,
    ("assignSpecificCoupon", 200): _CODE_LINKS,
    ("lockCoupon", 200): {
        "RedeemWithTheLock": _link("redeemCoupon", _CODE, userId=_OWNER,
                                   lockToken="$response.body#/lockToken"),
        "Unlock": _link("unlockCoupon", _CODE, userId=_OWNER,
                        lockToken="$response.body#/lockToken"),
    },
    ("unlockCoupon", 200): _CODE_LINKS,
    ("redeemCoupon", 200): _CODE_LINKS,
}


def build(operations: Sequence[Operation]) -> dict[str, Any]:
    types: list[Any] = [Problem]
    for op in operations:
        if op.request is not None:
            types.append(op.request)
        types.extend(kind for _, kind in op.responses.values() if kind is not None)
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    schema_of = {id(kind): schema for kind, schema in zip(types, schemas, strict=True)}

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schema_of)
    document: dict[str, Any] = _portable_patterns({
        "openapi": "3.1.0",
        "info": {
            "title": "Coupon Book Service",
            "version": __version__,
            "description": "Create coupon books, load or generate codes, hand them out, "
                           "lock them during checkout and redeem them, atomically.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "bearerFormat": "JWT"}},
        },
    })
    return document


def _portable_patterns(value: Any) -> Any:
    """The document with each pattern's END written `$`: in the ECMAScript
    regexes of JSON Schema `$` already means the end of the input, and a
    lookahead is past what many validators take (RE2-based ones refuse it).
    END is for msgspec, which matches with Python's `re`."""
    if isinstance(value, dict):
        return {key: (item.replace(END, "$") if key == "pattern" and isinstance(item, str)
                      else _portable_patterns(item)) for key, item in value.items()}
    if isinstance(value, list):
        return [_portable_patterns(item) for item in value]
    return value


def _operation(op: Operation, schema_of: dict[int, Any]) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": msgspec.json.schema(PATH_PARAMETERS[name])}
        for name in re.findall(r"{(\w+)}", op.path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "description": description,
         "schema": msgspec.json.schema(kind)}
        for name, description, kind in op.query
    ]
    if op.idempotent:
        parameters.append({
            "name": "Idempotency-Key", "in": "header", "required": False,
            "description": "Retries with the same key and request get the first answer "
                           "(kept 24 hours by default; for a new book, the book as it is "
                           "now, or 409 idempotency-key-in-progress while it is being "
                           "made); the same key with another request is 409.",
            "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY.pattern}$"},
        })
    responses: dict[str, Any] = {}
    for status, (description, kind) in op.responses.items():
        response: dict[str, Any] = {"description": description}
        if kind is not None:
            response["content"] = {"application/json": {"schema": schema_of[id(kind)]}}
        links = LINKS.get((op.operation_id, status))
        if links is not None:
            response["links"] = links
        responses[str(status)] = response
    problem = {PROBLEM_MEDIA_TYPE: {"schema": schema_of[id(Problem)]}}
    for status in sorted({*op.errors, *ON_EVERY_REQUEST}):
        responses[str(status)] = {"description": ERROR_DESCRIPTIONS[status], "content": problem}
    for code, answer in responses.items():
        headers = _headers(op, int(code))
        if headers:
            answer["headers"] = {name: HEADERS[name] for name in headers}
    document: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": parameters,
        "responses": responses,
        "security": [{"bearerAuth": []}] if op.auth else [],
    }
    if op.request is not None:
        content: dict[str, Any] = {"application/json": {"schema": schema_of[id(op.request)]}}
        if op.text_body is not None:
            content["text/plain"] = {"schema": {"type": "string", "description": op.text_body}}
        document["requestBody"] = {"required": True, "content": content}
    return document


def _headers(op: Operation, status: int) -> list[str]:
    """The headers an answer of `op` with `status` may carry."""
    names = list(op.headers.get(status, ()))
    if op.idempotent and 200 <= status < 300:
        names.append(REPLAYED_HEADER)
    if status == 401:
        names.append("WWW-Authenticate")
    if status in (423, 429, 503):
        names.append("Retry-After")
    return names


def encoded(operations: Sequence[Operation]) -> bytes:
    return msgspec.json.encode(build(operations))
