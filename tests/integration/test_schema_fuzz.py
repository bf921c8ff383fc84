"""Schema fuzzing: schemathesis sends generated requests, valid and invalid, to
every operation of a real `couponsvc serve` (on a real redis-server) and checks
each answer against the OpenAPI document the service serves.

Checks: no 5xx; the status code, content type, headers and body of every
answer are the documented ones; invalid input is refused with a 4xx; and every
4xx is an RFC 9457 problem (`problem_details` below). The same server is also
fuzzed through the seed's API definition, where only "no 5xx" and the content
type apply (the seed documents few statuses and no error bodies).

Runs are bounded and reproducible: a fixed seed, derandomized generation, no
example database, no shrinking (a failure prints a curl command that
reproduces it against any server).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from couponsvc import openapi
from couponsvc.routes import OPERATIONS

from .problems import PROBLEM_MEDIA_TYPE
from .servers import PROJECT_ROOT, Stack, running_stack
from .tokens import ADMIN, WRITE, bearer, make_token

pytestmark = pytest.mark.integration

SEED = 20240611
MAX_EXAMPLES = 50
# Stateful: scenarios of up to STEPS calls that follow the document's links
# (create a book, add codes, assign one, lock it, redeem it with the lock...).
SCENARIOS = 100
STEPS = 12
ATTEMPTS = 3
# The seed's definition, read where it lies (never copied into the project).
SEED_DEFINITION = next(
    (path for path in (PROJECT_ROOT.parent / "shared/seed/api-definition.yml",
                       Path("/work/shared/seed/api-definition.yml")) if path.is_file()),
    None,
)
FUZZ_ENV = {
    # The documented 429s are exercised when a generated run trips a limit.
    "COUPONSVC_RATE_LIMITS": "on",
    # Generating up to the default million codes per request is allowed and
    # takes seconds; the fuzzer would spend its time budget there. Over the
    # limit is the documented 400, which the fuzzer then sees.
    "COUPONSVC_MAX_UPLOAD_CODES": "100",
}


def problem_details(ctx: CheckContext, response: Response, case: Case) -> None:
    """Every 4xx is application/problem+json with type, title, status and detail."""
    if not 400 <= response.status_code < 500:
        return
    media = (response.headers.get("content-type") or [""])[0].split(";")[0].strip()
    assert media == PROBLEM_MEDIA_TYPE, f"{response.status_code} answered with {media!r}"
    body = response.json()
    assert isinstance(body, dict), body
    for name in ("type", "title", "status", "detail"):
        assert name in body, f"{name} missing from {body}"
    assert body["status"] == response.status_code, body
    assert all(isinstance(body[name], str) and body[name] for name in ("type", "title", "detail"))


SERVICE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
                  response_headers_conformance, response_schema_conformance,
                  negative_data_rejection, positive_data_acceptance, missing_required_header,
                  ignored_auth, unsupported_method, allow_header_conformance, problem_details]
# Bodies with rules across fields that a JSON Schema does not state (validFrom
# before validUntil, maxRedeemsPerCode only with multipleRedeemsAllowed, a code
# pattern's key space 100 times the count, exactly one of codes or generate):
# a schema-valid body can be the documented 400 there.
CROSS_FIELD_RULES = {"POST /coupons", "POST /coupons/codes"}


def valid_may_be_refused(case: Case) -> bool:
    """Whether a schema-valid request may still be a documented 400 (see above;
    and a listing cursor is opaque: only one the service issued is valid)."""
    return case.operation.label in CROSS_FIELD_RULES or "cursor" in (case.query or {})


# The seed documents few statuses and no error bodies: only these apply.
SEED_CHECKS = [not_a_server_error, content_type_conformance]


def _config(mode: str = "all") -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "generation": {
            "mode": mode,
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
            "no-shrink": True,
        },
        "checks": {
            # Valid input may still meet a state it conflicts with: an unknown
            # book or code, a held lock, a limit (never a 400, never a 5xx).
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "404", "409", "423", "429"],
            },
        },
    })


# The document the service serves, built from the route table as `create_app`
# does; test_served_document_is_the_fuzzed_one checks they are the same bytes.
# (schemathesis.pytest.from_fixture would load /openapi.json from the running
# server instead, but it breaks on pytest 9.2, which dropped Node._nodeid.)
SERVICE_DOCUMENT = openapi.encoded(OPERATIONS)
service = schemathesis.openapi.from_dict(json.loads(SERVICE_DOCUMENT), config=_config())
# Scenarios send valid requests only, to get deep: one invalid step ends a chain.
scenarios = schemathesis.openapi.from_dict(json.loads(SERVICE_DOCUMENT),
                                           config=_config("positive"))


# Random books are mostly empty, out of their validity window or refused for a
# rule across fields, and random uploads send both codes and generate (or
# neither): a chain would rarely get past the first assign. Scenarios draw
# most books and uploads from these realistic shapes instead (the stateless
# runs above keep fuzzing every shape).
PATTERN = "FZ-##########"
# A lock must outlive the steps after it: one that runs out between two steps
# makes a scenario answer differently each time it is replayed.
LONG_ENOUGH = {"ttlSeconds": 60, "lockTtlSeconds": 60}


def _book(name: Any) -> st.SearchStrategy[dict[str, Any]]:
    multiple = st.booleans()
    return multiple.flatmap(lambda many: st.fixed_dictionaries({
        "name": st.just(name if isinstance(name, str) and name else "fuzzed"),
        "initialCouponAmount": st.integers(1, 20),
        "codePattern": st.just(PATTERN),
        "multipleRedeemsAllowed": st.just(many),
        "lockTtlSeconds": st.integers(LONG_ENOUGH["lockTtlSeconds"], 600),
    }, optional={
        "maxPerUser": st.integers(1, 3),
        **({"maxRedeemsPerCode": st.integers(1, 3)} if many else {}),
    }))


def _upload(book: Any) -> st.SearchStrategy[dict[str, Any]]:
    # Generated, not listed: a drawn list would repeat in a later scenario,
    # where its codes already belong to an earlier book.
    generate = st.fixed_dictionaries({"pattern": st.just(PATTERN),
                                      "count": st.integers(1, 20)})
    return st.fixed_dictionaries({"couponBookId": st.just(book), "generate": generate})


def is_valid(case: Case) -> bool:
    return case.meta is not None and case.meta.generation.mode.is_positive


@scenarios.hook("flatmap_case")
def realistic_books_and_uploads(ctx: Any, case: Case) -> st.SearchStrategy[Case]:
    if not is_valid(case) or not isinstance(case.body, dict):
        return st.just(case)  # an invalid request stays the invalid one generated
    for name, least in LONG_ENOUGH.items():
        if isinstance(case.body.get(name), int):
            case.body[name] = max(case.body[name], least)
    if case.operation.label == "POST /coupons":
        bodies = _book(case.body.get("name"))
    elif case.operation.label == "POST /coupons/codes":
        bodies = _upload(case.body.get("couponBookId"))
    else:
        return st.just(case)

    def sending(body: dict[str, Any]) -> Case:
        realistic = case.derive(keep_auth=True)
        realistic.body = body
        return realistic

    return st.one_of(bodies.map(sending), bodies.map(sending), st.just(case))


# An end user's token acts only for its own user id (else 403): half of the
# valid requests of this run are made to name that user.
END_USER = "fuzz-user"
as_user = schemathesis.openapi.from_dict(json.loads(SERVICE_DOCUMENT), config=_config())


@as_user.hook("flatmap_case")
def for_the_end_user(ctx: Any, case: Case) -> st.SearchStrategy[Case]:
    if not is_valid(case):
        return st.just(case)
    own = case.derive(keep_auth=True)
    if "userId" in own.path_parameters:
        own.path_parameters["userId"] = END_USER
    if isinstance(own.body, dict) and "userId" in own.body:
        own.body["userId"] = END_USER
    return st.sampled_from([case, own])


seed = (schemathesis.openapi.from_path(SEED_DEFINITION, config=_config())
        if SEED_DEFINITION is not None else None)

# The fuzz stack checks tokens against this secret, so tokens exist before it
# starts (schemathesis applies auth while it builds its test cases).
SECRET = secrets.token_urlsafe(36)


class AdminToken:
    """A bearer token, set as schemathesis auth rather than a fixed header: an
    invalid case that leaves Authorization out on purpose is sent without it."""

    token = make_token(SECRET, "fuzz-admin", f"{ADMIN} {WRITE}")

    def get(self, case: Case, ctx: Any) -> str:
        return self.token

    def set(self, case: Case, token: str, ctx: Any) -> None:
        case.headers["Authorization"] = f"Bearer {token}"


class EndUserToken(AdminToken):
    token = make_token(SECRET, END_USER)


for schema, provider in ((service, AdminToken), (as_user, EndUserToken), (seed, AdminToken)):
    if schema is not None:
        schema.auth(refresh_interval=None)(provider)


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("fuzz"), SECRET, **FUZZ_ENV) as stack:
        yield stack


def test_served_document_is_the_fuzzed_one(fuzz_stack: Stack) -> None:
    response = httpx.get(f"{fuzz_stack.api.base_url}/openapi.json")

    assert response.status_code == 200
    assert response.content == SERVICE_DOCUMENT


@service.parametrize()
def test_service_schema_as_admin(case: Case, fuzz_stack: Stack) -> None:
    excluded = [positive_data_acceptance] if valid_may_be_refused(case) else []
    case.call_and_validate(base_url=fuzz_stack.api.base_url, checks=SERVICE_CHECKS,
                           excluded_checks=excluded)


@as_user.parametrize()
def test_service_schema_as_an_end_user(case: Case, fuzz_stack: Stack) -> None:
    excluded = [positive_data_acceptance] if valid_may_be_refused(case) else []
    case.call_and_validate(base_url=fuzz_stack.api.base_url, checks=SERVICE_CHECKS,
                           excluded_checks=excluded)


if seed is not None:
    @seed.parametrize()
    def test_seed_schema_against_the_service(case: Case, fuzz_stack: Stack) -> None:
        case.call_and_validate(base_url=fuzz_stack.api.base_url, checks=SEED_CHECKS)
else:
    @pytest.mark.skip(reason="the seed's api-definition.yml is not next to this checkout "
                             "(../shared/seed/ or /work/shared/seed/)")
    def test_seed_schema_against_the_service() -> None:
        pass


def test_stateful_scenarios_follow_the_links(fuzz_stack: Stack) -> None:
    base_url = fuzz_stack.api.base_url
    started = cut_short = 0

    class Scenarios(scenarios.as_state_machine()):
        def setup(self) -> None:
            nonlocal started
            started += 1
            # Each scenario acts as a caller of its own (a new token subject):
            # idempotency keys and rate limits are per caller, so what an
            # earlier scenario sent does not change this one's answers.
            self.headers = bearer(fuzz_stack.api.admin)

        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"base_url": base_url, "headers": self.headers}

        def validate_response(self, response: Response, case: Case,
                              additional_checks: Any = None, **kwargs: Any) -> None:
            excluded = [positive_data_acceptance] if valid_may_be_refused(case) else []
            case.validate_response(response, checks=SERVICE_CHECKS, excluded_checks=excluded,
                                   headers=self.headers, transport_kwargs=kwargs)

    # The service draws at random (the code an assign hands out, generated
    # codes), so a scenario Hypothesis replays can get other answers, take
    # another path and stop the run with FlakyStrategyDefinition (schemathesis'
    # own runner lets that pass too). Every step sent until then passed its
    # checks, so the rest of the budget goes to another run (not derandomized:
    # that would replay the first). A failing check raises FailureGroup, and
    # one that does not fail again on replay FlakyFailure: both fail the test.
    for attempt in range(ATTEMPTS):
        try:
            Scenarios.run(settings=hypothesis.settings(
                max_examples=SCENARIOS - started, stateful_step_count=STEPS,
                derandomize=attempt == 0, database=None, deadline=None,
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate]))
            break
        except hypothesis.errors.FlakyStrategyDefinition:
            cut_short += 1
            if started >= SCENARIOS:
                break
    # Attempts all cut short early would otherwise pass having checked only
    # the few scenarios they got to.
    assert started >= SCENARIOS, (
        f"only {started} of {SCENARIOS} scenarios ran; {cut_short} of {ATTEMPTS} "
        "attempts stopped on FlakyStrategyDefinition")
