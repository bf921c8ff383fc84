"""Secrets are Pulumi secrets: `secure:` in the stack files, secret Outputs in the program,
and in the cluster only inside Kubernetes Secrets, read by the pods through secretKeyRef."""

from __future__ import annotations

import json
from typing import Any

import pytest
from couponinfra.config import NAMESPACE, PLAIN_KEYS, SECRET_KEYS
from infra_harness import (
    Build,
    Builder,
    Secret,
    container,
    env_of,
    pod_spec,
    secret_forms,
    stack_file,
)
from pulumi.runtime import rpc

pytestmark = pytest.mark.unit


def _plain_strings(value: Any) -> list[str]:
    """Every string in a deserialized input that is not inside a secret marker."""
    if rpc.is_rpc_secret(value):
        return []
    if isinstance(value, dict):
        return [s for v in value.values() for s in _plain_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _plain_strings(v)]
    return [value] if isinstance(value, str) else []


def _mentions(text: str, built: Build) -> list[str]:
    return [key for key, value in built.secrets.items()
            if any(form in text for form in secret_forms(value))]


def test_stack_files_hold_secrets_only_as_secure_values(each_stack: Build) -> None:
    for key, value in stack_file(each_stack.stack).items():
        namespace, short = key.split(":", 1)
        if namespace != NAMESPACE:
            continue
        assert short in PLAIN_KEYS + SECRET_KEYS, f"unknown key {key}"
        is_secure = isinstance(value, dict) and set(value) == {"secure"}
        if short in SECRET_KEYS:
            assert is_secure, f"{key} must be a `secure:` value (pulumi config set --secret)"
        else:
            assert not is_secure, f"{key} is not a secret; the program reads it as plain text"


def test_each_stack_file_has_the_secrets_its_stores_need(each_stack: Build) -> None:
    file = stack_file(each_stack.stack)
    assert "postgresPassword" in each_stack.secrets
    assert ("jwtSecret" in each_stack.secrets) != ("couponsvc:jwtPublicKey" in file)
    managed_redis = file["couponsvc:redis"]["mode"] == "managed"
    assert ("redisPassword" in each_stack.secrets) == managed_redis


def test_no_secret_is_ever_plain_in_a_resource(each_stack: Build) -> None:
    assert each_stack.secrets
    for resource in each_stack.resources:
        for text in _plain_strings(resource.inputs):
            assert not _mentions(text, each_stack), f"{resource.typ} {resource.name}"


def test_secrets_reach_the_cluster_only_inside_secrets(each_stack: Build) -> None:
    holders = set()
    for resource in each_stack.resources:
        text = json.dumps(resource.plain)
        if _mentions(text, each_stack):
            holders.add((resource.kind, resource.name))
            # Kubernetes Secrets, or the components passing the secret Outputs along.
            assert resource.kind == "Secret" or resource.typ.startswith("couponsvc:"), \
                f"{resource.typ} {resource.name} holds a secret"
    assert ("Secret", "couponsvc-env") in holders


def test_no_secret_in_the_stack_outputs_or_the_log(each_stack: Build) -> None:
    assert not _mentions(json.dumps(each_stack.outputs), each_stack)
    for record in each_stack.log:
        assert not _mentions(record.getMessage(), each_stack)


def test_the_program_reads_secrets_only_as_secrets(each_stack: Build) -> None:
    secret_keys = {f"{NAMESPACE}:{key}" for key in SECRET_KEYS}
    assert not each_stack.plain_reads & secret_keys


def test_pods_read_secret_variables_by_reference(each_stack: Build) -> None:
    for workload in [*each_stack.of_kind("Deployment"), *each_stack.of_kind("StatefulSet"),
                     *each_stack.of_kind("Job")]:
        for spec in pod_spec(workload)["containers"]:
            for name, value in env_of(spec).items():
                if any(word in name for word in ("SECRET", "PASSWORD", "DATABASE_URL",
                                                 "REDIS_URL")):
                    assert isinstance(value, dict) and "secretKeyRef" in value, \
                        f"{workload.name}: {name}"


def test_in_cluster_postgres_takes_its_password_from_a_secret(stacks: Builder) -> None:
    built = stacks("dev")
    env = env_of(container(built.one("StatefulSet", "postgres"), "postgres"))
    secret = built.one("Secret", "postgres")
    assert env["POSTGRES_PASSWORD"] == {"secretKeyRef": {
        "name": secret.object_name, "key": "POSTGRES_PASSWORD"}}
    assert secret.plain["stringData"]["POSTGRES_PASSWORD"] == built.secrets["postgresPassword"]


PUBLIC_KEY = ("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
              "-----END PUBLIC KEY-----\n")


def test_a_public_key_replaces_the_jwt_secret(stacks: Builder) -> None:
    built = stacks("staging", {"jwtSecret": None, "jwtPublicKey": PUBLIC_KEY})
    env = env_of(container(built.one("Deployment", "couponsvc-api"), "api"))
    assert env["COUPONSVC_JWT_PUBLIC_KEY"] == PUBLIC_KEY
    assert "COUPONSVC_JWT_SECRET" not in env
    assert "COUPONSVC_JWT_SECRET" not in built.one("Secret", "couponsvc-env").plain["stringData"]


def test_a_short_jwt_secret_is_refused_without_being_shown(stacks: Builder) -> None:
    short = "too-short-a-secret"
    with pytest.raises(Exception, match="couponsvc:jwtSecret must be at least 32 bytes") as info:
        stacks("dev", {"jwtSecret": Secret(short)})
    assert short not in str(info.value)


def test_a_missing_secret_stops_the_build(stacks: Builder) -> None:
    with pytest.raises(Exception, match="postgresPassword"):
        stacks("prod-eu-west-1", {"postgresPassword": None})
