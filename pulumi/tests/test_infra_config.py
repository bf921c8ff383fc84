"""A stack whose config does not describe a deployable service does not build."""

from __future__ import annotations

from typing import Any

import pytest
from couponinfra.config import ConfigError, quantity
from infra_harness import Builder, container, env_of, stack_file

pytestmark = pytest.mark.unit


def _with(stack: str, key: str, **changes: Any) -> dict[str, Any]:
    return {key: {**stack_file(stack)[f"couponsvc:{key}"], **changes}}


@pytest.mark.parametrize(("text", "value"), [
    ("250m", 0.25), ("2", 2.0), ("1.5", 1.5), ("512Mi", 512 * 2**20), ("1Gi", 2**30),
    ("1G", 1e9),
])
def test_quantities(text: str, value: float) -> None:
    assert quantity(text) == value


@pytest.mark.parametrize("text", ["", "1 Gi", "-1", "lots", "1gb"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ConfigError):
        quantity(text)


def test_bare_numbers_are_quantities(stacks: Builder) -> None:
    resources = {"requests": {"cpu": 0.5, "memory": "256Mi"},
                 "limits": {"cpu": 1, "memory": "512Mi"}}
    built = stacks("dev", _with("dev", "api", resources=resources))
    spec = built.one("Deployment", "couponsvc-api").plain["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"] == {"cpu": "1", "memory": "512Mi"}
    assert spec["containers"][0]["resources"]["requests"]["cpu"] == "0.5"


def test_trusted_proxies_reach_the_api_as_forwarded_allow_ips(stacks: Builder) -> None:
    """The ingress's X-Forwarded-For is believed only from these addresses; without
    them every end user seems to come from the ingress (one per-address limit)."""
    built = stacks("dev", _with("dev", "api", trustedProxies="10.0.0.0/8, 192.168.1.7"))
    plain = stacks("dev", {})

    api = env_of(container(built.one("Deployment", "couponsvc-api"), "api"))
    assert api["FORWARDED_ALLOW_IPS"] == "10.0.0.0/8, 192.168.1.7"
    assert "FORWARDED_ALLOW_IPS" not in env_of(
        container(plain.one("Deployment", "couponsvc-api"), "api"))


@pytest.mark.parametrize(("stack", "overrides", "message"), [
    ("dev", {"imageTag": "latest"}, "imageTag must be the image's git commit"),
    ("dev", {"image": "registry.example.com/couponsvc:1.0"}, "the tag is imageTag"),
    ("dev", {"environment": "production"}, "couponsvc:environment must be one of"),
    ("dev", {"keyPrefix": "cb:{x}"}, "keyPrefix"),
    ("dev", {"namespace": "Coupon_Svc"}, "not a DNS label"),
    ("dev", _with("dev", "api", minReplicas=5, maxReplicas=2), "minReplicas .5. is over"),
    ("dev", _with("dev", "api", minReplica=2), "unknown keys: minReplica"),
    ("dev", _with("dev", "writer", replicas=0), "replicas must be at least 1"),
    ("dev", _with("dev", "writer", replicas=None), "couponsvc:writer.replicas is required"),
    ("dev", _with("dev", "writer", resources={"requests": {"cpu": "1 core", "memory": "1Gi"},
                                              "limits": {"cpu": "1", "memory": "1Gi"}}),
     "not a Kubernetes quantity"),
    ("dev", _with("dev", "api", resources={"requests": {"cpu": "2", "memory": "1Gi"},
                                           "limits": {"cpu": "1", "memory": "1Gi"}}),
     "cpu request 2 is over the limit 1"),
    ("dev", _with("dev", "redis", nodes=5), "must be a multiple of 2"),
    ("dev", _with("dev", "redis", cluster=False), "in-cluster Redis is a Redis Cluster"),
    ("dev", _with("dev", "postgres", mode="rds"), "mode must be managed or in-cluster"),
    ("qa", _with("qa", "postgres", host=None), "couponsvc:postgres.host is required"),
    ("dev", _with("dev", "redis", host="redis.example"), "host is for mode: managed only"),
    ("prod-eu-west-1", _with("prod-eu-west-1", "redis", mode="in-cluster", host=None, tls=None),
     "must be managed endpoints"),
    ("prod-eu-west-1", _with("prod-eu-west-1", "redis", tls=False), "tls must be true"),
    ("prod-eu-west-1", _with("prod-eu-west-1", "postgres", sslmode="disable"), "sslmode"),
    ("prod-us-east-1", _with("prod-us-east-1", "api", minReplicas=1), "at least 2"),
    ("staging", {"imageTag": None}, "imageTag"),
    ("dev", _with("dev", "api", trustedProxies="10.0.0.0/8,ingress"),
     "'ingress' is not an IP address or network"),
])
def test_bad_config_is_refused(stacks: Builder, stack: str, overrides: dict[str, Any],
                               message: str) -> None:
    with pytest.raises(Exception, match=message):
        stacks(stack, overrides)
