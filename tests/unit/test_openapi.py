"""The OpenAPI document built from the route table."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from couponsvc import openapi, schemas
from couponsvc.errors import PROBLEM_MEDIA_TYPE
from couponsvc.routes import MAX_PAGE, OPERATIONS

pytestmark = pytest.mark.unit

REF = re.compile(r"#/components/schemas/(\w+)")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi.build(OPERATIONS)


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_version_and_info(document):
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["title"] and document["info"]["version"]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_every_route_is_documented_once(document):
    documented = {(path, method) for path, method, _ in operations(document)}

    assert documented == {(op.path, op.method.lower()) for op in OPERATIONS}
    assert len(documented) == len(OPERATIONS)
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))


def test_every_reference_resolves(document):
    schemas = document["components"]["schemas"]
    found = list(refs(document))

    assert found
    for ref in found:
        match = REF.fullmatch(ref)
        assert match, ref
        assert match.group(1) in schemas, ref


def test_request_bodies(document):
    for op in OPERATIONS:
        operation = document["paths"][op.path][op.method.lower()]
        if op.method == "POST":
            body = operation["requestBody"]
            assert body["required"] is True
            schema = body["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{op.request.__name__}"}
        else:
            assert "requestBody" not in operation


def test_path_parameters_are_declared(document):
    for path, _, operation in operations(document):
        declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path))


def test_errors_are_problem_documents(document):
    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])

    for op in OPERATIONS:
        responses = document["paths"][op.path][op.method.lower()]["responses"]
        errors = {status for status in map(int, responses) if status >= 400}
        # Only /readyz answers 503 with its own body (the health report); a
        # request too slow to arrive is 408 on any route (serving.py).
        assert errors - set(op.responses) == set(op.errors) | {408}, op.path
        for status in {*op.errors, 408}:
            content = responses[str(status)]["content"]
            assert content == {PROBLEM_MEDIA_TYPE: {"schema": {
                "$ref": "#/components/schemas/Problem"}}}, (op.path, status)
            if status in (423, 503):
                assert "Retry-After" in responses[str(status)]["headers"]


def test_write_routes_document_auth_and_validation_errors():
    for op in OPERATIONS:
        if op.auth:
            assert {401, 503} <= set(op.errors), op.path
        if op.method == "POST":
            assert {400, 401, 403, 415} <= set(op.errors), op.path
        if op.idempotent or "{code}" in op.path:
            assert 409 in op.errors, op.path


def test_idempotent_routes_take_the_header(document):
    for op in OPERATIONS:
        params = document["paths"][op.path][op.method.lower()]["parameters"]
        has_header = any(p["in"] == "header" and p["name"] == "Idempotency-Key" for p in params)
        assert has_header == op.idempotent, op.path


def test_security(document):
    for op in OPERATIONS:
        security = document["paths"][op.path][op.method.lower()]["security"]
        assert security == ([{"bearerAuth": []}] if op.auth else []), op.path


def test_encoded_document_matches(document):
    assert msgspec.json.decode(openapi.encoded(OPERATIONS)) == msgspec.json.decode(
        msgspec.json.encode(document))



def portable(pattern: str) -> str:
    """A pattern as the document gives it: END is written `$` (ECMAScript)."""
    return pattern.replace(schemas.END, "$")


def test_patterns_keep_to_what_every_json_schema_validator_reads(document):
    """No lookaround (RE2-based validators refuse it), and every pattern the
    service checks with END is anchored with `$` instead."""
    found: list[str] = []

    def collect(value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "pattern" and isinstance(item, str):
                    found.append(item)
                else:
                    collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    collect(document)
    assert portable(schemas.USER_PATTERN) in found
    assert [p for p in found if "(?" in p] == []


def test_parameters_state_the_rules_the_handlers_check(document):
    # Schema fuzzing generates parameters from these: a bare "string" made valid
    # requests look invalid and invalid ones look valid.
    patterns = {"code": portable(schemas.CODE_PATTERN),
                "couponBookId": portable(schemas.BOOK_ID_PATTERN),
                "userId": portable(schemas.USER_PATTERN)}
    for path, _, operation in operations(document):
        for parameter in operation["parameters"]:
            schema, name = parameter["schema"], parameter["name"]
            if parameter["in"] == "path":
                assert schema["pattern"] == patterns[name], (path, name)
    listing = document["paths"]["/users/{userId}/coupons"]["get"]["parameters"]
    query = {p["name"]: p["schema"] for p in listing if p["in"] == "query"}
    assert query["couponBookId"]["pattern"] == portable(schemas.BOOK_ID_PATTERN)
    assert (query["limit"]["minimum"], query["limit"]["maximum"]) == (1, MAX_PAGE)
    redeem = document["paths"]["/coupons/redeem/{code}"]["post"]["parameters"]
    [key] = [p["schema"]["pattern"] for p in redeem if p["name"] == "Idempotency-Key"]
    assert re.fullmatch(key, "order-1234") and re.fullmatch(key, "!" * 255)
    assert not any(re.fullmatch(key, bad) for bad in ("", "with space", "é", "x" * 256))


def test_links_name_real_operations_parameters_and_fields(document):
    # Links drive the stateful schema fuzzing (create a book, assign, lock, redeem...).
    schemas_ = document["components"]["schemas"]
    by_id = {operation["operationId"]: operation for _, _, operation in operations(document)}
    found = 0
    for _, _, operation in operations(document):
        for response in operation["responses"].values():
            produced = schemas_[REF.fullmatch(response["content"]["application/json"]["schema"]
                                              ["$ref"]).group(1)] if "links" in response else {}
            for link in response.get("links", {}).values():
                found += 1
                target = by_id[link["operationId"]]
                expressions = dict(link.get("parameters", {}))
                for parameter in link.get("parameters", {}):
                    where, name = parameter.split(".")
                    assert any(p["in"] == where and p["name"] == name
                               for p in target["parameters"]), (link, parameter)
                if "requestBody" in link:
                    body_ref = target["requestBody"]["content"]["application/json"]["schema"]
                    accepted = schemas_[REF.fullmatch(body_ref["$ref"]).group(1)]["properties"]
                    assert set(link["requestBody"]) <= set(accepted), link
                    expressions.update(link["requestBody"])
                for expression in expressions.values():
                    field = re.fullmatch(r"\$response\.body#/(\w+)(/\d+)?", expression)
                    assert field and field.group(1) in produced["properties"], expression
    assert found >= 10


def response_headers(document, path, method, status):
    return document["paths"][path][method]["responses"][str(status)].get("headers", {})


def test_created_book_names_its_location(document):
    location = response_headers(document, "/coupons", "post", 201)["Location"]

    assert location["required"] is True
    assert re.fullmatch(location["schema"]["pattern"],
                        "/coupons/3d923150-5c16-430b-a40c-60835dafadc7")


def test_listing_names_its_next_page_link(document):
    link = response_headers(document, "/users/{userId}/coupons", "get", 200)["Link"]

    assert not link.get("required")  # the last page has none
    assert re.fullmatch(link["schema"]["pattern"],
                        '</users/bob/coupons?cursor=MTpB&limit=1>; rel="next"')


def test_idempotent_answers_may_say_they_are_replays(document):
    for op in OPERATIONS:
        headers = response_headers(document, op.path, op.method.lower(), min(op.responses))
        if op.idempotent:
            replayed = headers["Idempotent-Replayed"]
            assert not replayed.get("required"), op.path  # only on a replay
            assert replayed["schema"] == {"type": "string", "enum": ["true"]}
        else:
            assert "Idempotent-Replayed" not in headers, op.path


def test_401_names_the_bearer_scheme(document):
    for op in OPERATIONS:
        if 401 not in op.errors:
            continue
        challenge = response_headers(document, op.path, op.method.lower(), 401)[
            "WWW-Authenticate"]
        assert challenge["required"] is True
        for sent in ("Bearer", 'Bearer error="invalid_token"'):
            assert re.fullmatch(challenge["schema"]["pattern"], sent)


def test_every_503_says_when_to_retry(document):
    for path, method, operation in operations(document):
        if "503" in operation["responses"]:
            assert "Retry-After" in response_headers(document, path, method, 503), path
    assert "Retry-After" in response_headers(document, "/readyz", "get", 503)


def datetime_fields(struct):
    for field in msgspec.structs.fields(struct):
        if "datetime" in str(field.type):
            yield field.name


@pytest.mark.parametrize("struct", [schemas.Book, schemas.Coupon, schemas.LockResult,
                                    schemas.Redemption])
def test_response_timestamps_are_date_times(document, struct):
    properties = document["components"]["schemas"][struct.__name__]["properties"]
    names = list(datetime_fields(struct))

    assert names
    for name in names:
        schema = properties[name]
        options = schema.get("anyOf", [schema])
        assert {"type": "string", "format": "date-time"}.items() <= options[0].items(), name
