"""Every stack file builds, and each wires what the service really exposes."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

import pytest
from infra_harness import (
    Build,
    Builder,
    container,
    env_of,
    pod_spec,
    port_number,
    stack_file,
    stack_names,
)

pytestmark = pytest.mark.unit

COMMIT = re.compile(r"^[0-9a-f]{7,40}$")
APP_SECRET_KEYS = {"COUPONSVC_REDIS_URL", "COUPONSVC_DATABASE_URL", "COUPONSVC_JWT_SECRET"}


def test_there_is_a_stack_per_environment_and_region() -> None:
    names = stack_names()
    assert {"dev", "qa", "staging"} <= set(names)
    assert {name for name in names if name.startswith("prod-")} >= {
        "prod-eu-west-1", "prod-us-east-1"}


def test_each_stack_builds_cleanly(each_stack: Build) -> None:
    file = stack_file(each_stack.stack)
    assert each_stack.outputs["environment"] == file["couponsvc:environment"]
    assert each_stack.outputs["region"] == file["couponsvc:region"]
    kinds = {r.kind for r in each_stack.resources}
    assert {"Namespace", "Secret", "Job", "Deployment", "Service",
            "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    problems = [r.getMessage() for r in each_stack.log if r.levelname in ("WARNING", "ERROR")]
    assert problems == []


def test_stack_names_say_environment_and_region(each_stack: Build) -> None:
    env, region = each_stack.outputs["environment"], each_stack.outputs["region"]
    if env == "prod":
        assert each_stack.stack == f"prod-{region}"
    else:
        assert each_stack.stack == env


def test_each_stack_targets_its_own_cluster(each_stack: Build) -> None:
    provider = each_stack.one("kubernetes", "k8s")
    context = provider.plain["context"]
    assert context == stack_file(each_stack.stack)["couponsvc:kubeContext"]
    assert each_stack.outputs["environment"] in context
    assert each_stack.outputs["region"] in context


def test_images_are_the_configured_repository_at_the_commit(each_stack: Build) -> None:
    file = stack_file(each_stack.stack)
    tag = file["couponsvc:imageTag"]
    assert COMMIT.match(tag)
    expected = f"{file['couponsvc:image']}:{tag}"
    workloads = [each_stack.one("Deployment", "couponsvc-api"),
                 each_stack.one("Deployment", "couponsvc-writer"),
                 each_stack.one("Job", "couponsvc-migrate")]
    images = {c["image"] for w in workloads for c in pod_spec(w)["containers"]}
    assert images == {expected}
    assert each_stack.outputs["image"] == expected


def test_api_listens_on_8000_with_healthz_and_readyz(each_stack: Build) -> None:
    api = each_stack.one("Deployment", "couponsvc-api")
    spec = container(api, "api")
    assert spec["args"] == ["serve"]
    assert [(p["name"], p["containerPort"]) for p in spec["ports"]] == [("http", 8000)]
    env = env_of(spec)
    # Where uvicorn binds: every interface, the port the probes and the Service use.
    assert env["COUPONSVC_HOST"] == "0.0.0.0"
    assert env["COUPONSVC_PORT"] == "8000"
    probes = {kind: spec[kind]["httpGet"] for kind in
              ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["startupProbe"]["path"] == "/healthz"
    assert {port_number(spec, p["port"]) for p in probes.values()} == {8000}


def test_api_service_reaches_port_8000_of_the_api_pods(each_stack: Build) -> None:
    api = each_stack.one("Deployment", "couponsvc-api")
    service = each_stack.one("Service", "couponsvc-api").plain["spec"]
    pod_labels = api.plain["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()
    assert [port_number(container(api, "api"), p["targetPort"])
            for p in service["ports"]] == [8000]
    assert each_stack.outputs["apiService"] == "couponsvc-api"


def test_api_autoscaler_and_disruption_budget_cover_the_api(each_stack: Build) -> None:
    api = each_stack.one("Deployment", "couponsvc-api")
    pod_labels = api.plain["spec"]["template"]["metadata"]["labels"]
    hpa = each_stack.one("HorizontalPodAutoscaler", "couponsvc-api").plain["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": api.plain["metadata"]["name"]}
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    # The autoscaler owns the replica count; the Deployment must not reset it.
    assert "replicas" not in api.plain["spec"]
    pdb = each_stack.one("PodDisruptionBudget", "couponsvc-api").plain["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["maxUnavailable"] >= 1


def test_writer_serves_metrics_on_9101(each_stack: Build) -> None:
    writer = each_stack.one("Deployment", "couponsvc-writer")
    spec = container(writer, "writer")
    assert spec["args"] == ["writer", "--metrics-port", "9101"]
    assert [(p["name"], p["containerPort"]) for p in spec["ports"]] == [("metrics", 9101)]
    probe = spec["livenessProbe"]["httpGet"]
    assert probe["path"] == "/metrics"
    assert port_number(spec, probe["port"]) == 9101
    # The metrics server binds COUPONSVC_HOST: it must not be loopback only.
    assert env_of(spec)["COUPONSVC_HOST"] == "0.0.0.0"
    annotations = writer.plain["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9101"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_migration_runs_before_the_api_and_the_writer(each_stack: Build) -> None:
    migrate = each_stack.one("Job", "couponsvc-migrate")
    assert container(migrate, "migrate")["args"] == ["migrate"]
    assert pod_spec(migrate)["restartPolicy"] == "Never"
    for name in ("couponsvc-api", "couponsvc-writer"):
        assert each_stack.depends(each_stack.one("Deployment", name), migrate)
    # In-cluster stores are up before the migration starts.
    for statefulset in each_stack.of_kind("StatefulSet"):
        assert each_stack.depends(migrate, statefulset)


def test_api_writer_and_migration_share_one_configuration(each_stack: Build) -> None:
    envs = [env_of(container(each_stack.one(kind, name), c)) for kind, name, c in (
        ("Deployment", "couponsvc-api", "api"),
        ("Deployment", "couponsvc-writer", "writer"),
        ("Job", "couponsvc-migrate", "migrate"),
    )]
    # The API's own: where it listens, and the key it checks tokens with (the
    # others never see a token: test_only_the_api_is_handed_the_jwt_secret).
    specific = {"COUPONSVC_HOST", "COUPONSVC_PORT", "COUPONSVC_JWT_SECRET"}
    shared = [{k: v for k, v in env.items() if k not in specific} for env in envs]
    assert shared[0] == shared[1] == shared[2]
    env = shared[0]
    assert env["COUPONSVC_ENV"] == "prod"
    file = stack_file(each_stack.stack)
    assert env["COUPONSVC_KEY_PREFIX"] == file.get("couponsvc:keyPrefix", "cb")
    assert env["COUPONSVC_JWT_AUDIENCE"] == file["couponsvc:jwtAudience"]
    assert env["COUPONSVC_JWT_ISSUER"] == file["couponsvc:jwtIssuer"]


def test_secret_variables_come_from_the_app_secret(each_stack: Build) -> None:
    secret = each_stack.one("Secret", "couponsvc-env")
    # No fixed name: Pulumi names it, and replaces it (so the pods roll) when it changes.
    assert "name" not in secret.plain["metadata"]
    env = env_of(container(each_stack.one("Deployment", "couponsvc-api"), "api"))
    for key in APP_SECRET_KEYS:
        ref = env[key]["secretKeyRef"]
        assert ref == {"name": secret.object_name, "key": key}
        assert secret.plain["stringData"][key]


def test_only_the_api_is_handed_the_jwt_secret(each_stack: Build) -> None:
    """The writer and the migration never verify a token (the service starts
    them without a secret), so they do not get one."""
    secret = each_stack.one("Secret", "couponsvc-env")
    api = env_of(container(each_stack.one("Deployment", "couponsvc-api"), "api"))
    writer = env_of(container(each_stack.one("Deployment", "couponsvc-writer"), "writer"))
    migrate = env_of(container(each_stack.one("Job", "couponsvc-migrate"), "migrate"))
    assert "COUPONSVC_JWT_SECRET" in api
    for env in (writer, migrate):
        assert "COUPONSVC_JWT_SECRET" not in env
        for key in APP_SECRET_KEYS - {"COUPONSVC_JWT_SECRET"}:
            assert env[key]["secretKeyRef"] == {"name": secret.object_name, "key": key}


def test_redis_cluster_mode_is_switched_on_where_redis_is_a_cluster(each_stack: Build) -> None:
    redis = stack_file(each_stack.stack)["couponsvc:redis"]
    assert redis["cluster"] is True
    env = env_of(container(each_stack.one("Deployment", "couponsvc-writer"), "writer"))
    assert env["COUPONSVC_REDIS_CLUSTER"] == "true"
    api = env_of(container(each_stack.one("Deployment", "couponsvc-api"), "api"))
    assert api["COUPONSVC_REDIS_CLUSTER"] == "true"
    assert api["COUPONSVC_REDIS_WAIT_REPLICAS"] == "1"  # changes reach the replica first
    for statefulset in each_stack.of_kind("StatefulSet"):
        if statefulset.name == "redis":
            args = container(statefulset, "redis")["args"]
            assert args[args.index("--cluster-enabled") + 1] == "yes"


def test_a_managed_redis_out_of_cluster_mode_is_not_told_it_is_one(stacks: Builder) -> None:
    redis = {**stack_file("staging")["couponsvc:redis"], "cluster": False}
    built = stacks("staging", {"redis": redis})
    env = env_of(container(built.one("Deployment", "couponsvc-api"), "api"))
    assert env["COUPONSVC_REDIS_CLUSTER"] == "false"


def test_store_urls_point_at_the_configured_stores(each_stack: Build) -> None:
    file = stack_file(each_stack.stack)
    secret = each_stack.one("Secret", "couponsvc-env").plain["stringData"]
    redis, postgres = file["couponsvc:redis"], file["couponsvc:postgres"]
    redis_url = urlsplit(secret["COUPONSVC_REDIS_URL"])
    if redis["mode"] == "managed":
        assert (redis_url.scheme, redis_url.hostname) == ("rediss", redis["host"])
        assert unquote(redis_url.password or "") == each_stack.secrets["redisPassword"]
    else:
        assert redis_url.scheme == "redis"
        assert redis_url.hostname == "redis.couponsvc.svc.cluster.local"
    assert redis_url.port == 6379
    db_url = urlsplit(secret["COUPONSVC_DATABASE_URL"])
    assert db_url.scheme == "postgresql"
    assert db_url.username == postgres["user"]
    assert unquote(db_url.password or "") == each_stack.secrets["postgresPassword"]
    assert db_url.port == 5432
    assert db_url.path == f"/{postgres['database']}"
    if postgres["mode"] == "managed":
        assert db_url.hostname == postgres["host"]
        assert db_url.query == f"sslmode={postgres['sslmode']}"
    else:
        assert db_url.hostname == "postgres.couponsvc.svc.cluster.local"


def test_containers_have_requests_and_limits(each_stack: Build) -> None:
    file = stack_file(each_stack.stack)
    for kind, name, config in (("Deployment", "couponsvc-api", "couponsvc:api"),
                               ("Deployment", "couponsvc-writer", "couponsvc:writer")):
        spec = container(each_stack.one(kind, name), name.split("-")[1])
        assert spec["resources"] == {
            bound: {resource: str(value) for resource, value in values.items()}
            for bound, values in file[config]["resources"].items()}
    for workload in [*each_stack.of_kind("StatefulSet"), *each_stack.of_kind("Job")]:
        for spec in pod_spec(workload)["containers"]:
            assert set(spec["resources"]) == {"requests", "limits"}, workload.name


def test_every_pod_meets_the_restricted_pod_security_standard(each_stack: Build) -> None:
    namespace = each_stack.one("Namespace", "couponsvc").plain["metadata"]
    assert namespace["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    workloads = [r for r in each_stack.resources
                 if r.kind in ("Deployment", "StatefulSet", "Job")]
    assert workloads
    for workload in workloads:
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, workload.name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for spec in pod["containers"]:
            security = spec["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, workload.name
            assert security["capabilities"]["drop"] == ["ALL"], workload.name
            assert security["readOnlyRootFilesystem"] is True, workload.name


def test_the_app_pods_have_a_writable_tmp(each_stack: Build) -> None:
    """The image's root file system is read-only: its pods mount an emptyDir on /tmp."""
    workloads = [*each_stack.of_kind("Deployment"), each_stack.one("Job", "couponsvc-migrate")]
    for workload in workloads:
        pod = pod_spec(workload)
        empty_dirs = {volume["name"] for volume in pod.get("volumes", []) if "emptyDir" in volume}
        for spec in pod["containers"]:
            tmp = [mount["name"] for mount in spec.get("volumeMounts", [])
                   if mount["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and tmp[0] in empty_dirs, workload.name
