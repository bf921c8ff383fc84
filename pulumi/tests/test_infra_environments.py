"""The environments differ as intended: sizes, replicas, autoscaling bounds, regions, stores."""

from __future__ import annotations

import pytest
from couponinfra.config import quantity
from infra_harness import Build, Builder, container, env_of, stack_file

pytestmark = pytest.mark.unit

PROD = ("prod-eu-west-1", "prod-us-east-1")


def _hpa(built: Build) -> dict[str, int]:
    spec = built.one("HorizontalPodAutoscaler", "couponsvc-api").plain["spec"]
    return {"min": int(spec["minReplicas"]), "max": int(spec["maxReplicas"])}


def _requests(built: Build, name: str) -> tuple[float, float]:
    spec = container(built.one("Deployment", f"couponsvc-{name}"), name)
    requests = spec["resources"]["requests"]
    return quantity(requests["cpu"]), quantity(requests["memory"])


def _writers(built: Build) -> int:
    return int(built.one("Deployment", "couponsvc-writer").plain["spec"]["replicas"])


def test_autoscaling_bounds_are_the_stack_files(each_stack: Build) -> None:
    api = stack_file(each_stack.stack)["couponsvc:api"]
    assert _hpa(each_stack) == {"min": api["minReplicas"], "max": api["maxReplicas"]}
    assert each_stack.outputs["apiReplicas"] == _hpa(each_stack)


@pytest.mark.parametrize("prod", PROD)
def test_prod_is_bigger_than_dev(stacks: Builder, prod: str) -> None:
    dev, big = stacks("dev"), stacks(prod)
    assert _hpa(big)["min"] > _hpa(dev)["min"]
    assert _hpa(big)["max"] > _hpa(dev)["max"]
    assert _writers(big) > _writers(dev)
    for name in ("api", "writer"):
        dev_cpu, dev_memory = _requests(dev, name)
        cpu, memory = _requests(big, name)
        assert cpu > dev_cpu and memory > dev_memory, name


def test_environments_grow_from_dev_to_prod(stacks: Builder) -> None:
    order = ["dev", "qa", "staging", "prod-eu-west-1"]
    minimums = [_hpa(stacks(name))["min"] for name in order]
    maximums = [_hpa(stacks(name))["max"] for name in order]
    assert minimums == sorted(minimums) and maximums == sorted(maximums)
    assert minimums[0] < minimums[-1] and maximums[0] < maximums[-1]


def test_production_runs_at_least_two_api_pods_and_two_writers(stacks: Builder) -> None:
    for name in ("staging", *PROD):
        assert _hpa(stacks(name))["min"] >= 2, name
        assert _writers(stacks(name)) >= 2, name


def test_the_prod_regions_have_one_shape_and_their_own_endpoints(stacks: Builder) -> None:
    eu, us = (stacks(name) for name in PROD)
    assert eu.outputs["environment"] == us.outputs["environment"] == "prod"
    assert (eu.outputs["region"], us.outputs["region"]) == ("eu-west-1", "us-east-1")
    assert _hpa(eu)["min"] == _hpa(us)["min"]
    for name in ("api", "writer"):
        assert _requests(eu, name) == _requests(us, name)
    contexts = [built.one("kubernetes", "k8s").plain["context"] for built in (eu, us)]
    assert contexts[0] != contexts[1]
    for built in (eu, us):
        region = built.outputs["region"]
        secret = built.one("Secret", "couponsvc-env").plain["stringData"]
        for url in (secret["COUPONSVC_REDIS_URL"], secret["COUPONSVC_DATABASE_URL"]):
            assert f".{region}." in url


def test_stores_are_in_cluster_for_dev_and_qa_only(stacks: Builder) -> None:
    expected = {
        "dev": {"redis", "postgres"},
        "qa": {"redis"},
        "staging": set(),
        "prod-eu-west-1": set(),
        "prod-us-east-1": set(),
    }
    for name, statefulsets in expected.items():
        built = stacks(name)
        assert {s.name for s in built.of_kind("StatefulSet")} == statefulsets, name
        assert built.outputs["redis"] == ("in-cluster" if "redis" in statefulsets else "managed")


def test_in_cluster_redis_is_a_cluster_of_the_configured_size(stacks: Builder) -> None:
    for name in ("dev", "qa"):
        built = stacks(name)
        redis = stack_file(name)["couponsvc:redis"]
        statefulset = built.one("StatefulSet", "redis")
        assert statefulset.plain["spec"]["replicas"] == redis["nodes"]
        create = env_of(container(built.one("Job", "redis-cluster-create"), "cluster-create"))
        assert create["NODES"] == str(redis["nodes"])
        assert create["REPLICAS"] == str(redis["replicasPerPrimary"])
        assert built.depends(built.one("Job", "redis-cluster-create"), statefulset)
        args = container(statefulset, "redis")["args"]
        assert args[args.index("--appendonly") + 1] == "yes"
        assert args[args.index("--appendfsync") + 1] == "everysec"
        assert args[args.index("--auto-aof-rewrite-percentage") + 1] == "400"
        assert args[args.index("--rdbcompression") + 1] == "no"


def test_managed_stores_use_tls(stacks: Builder) -> None:
    for name in ("staging", *PROD):
        secret = stacks(name).one("Secret", "couponsvc-env").plain["stringData"]
        assert secret["COUPONSVC_REDIS_URL"].startswith("rediss://"), name
        assert "sslmode=require" in secret["COUPONSVC_DATABASE_URL"], name
