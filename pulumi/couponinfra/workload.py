"""What the service's pods share: labels, the environment, security, the pod and store shapes.

The constants are what the image really exposes (Dockerfile, src/couponsvc/cli.py):
`couponsvc serve` listens on COUPONSVC_PORT (8000) with /healthz (liveness, no I/O) and
/readyz (200 once Redis answers); `couponsvc writer --metrics-port 9101` serves /metrics.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import pulumi
import pulumi_kubernetes as k8s

from couponinfra.config import Resources, StoreSettings

APP = "couponsvc"
API_PORT = 8000
WRITER_METRICS_PORT = 9101
HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
METRICS_PATH = "/metrics"
JWT_SECRET_KEY = "COUPONSVC_JWT_SECRET"
APP_UID = 10001  # the image's non-root user (Dockerfile)


def selector_labels(component: str, instance: str) -> dict[str, str]:
    """Labels that pick one component's pods: stable for the life of the Deployment."""
    return {
        "app.kubernetes.io/name": APP,
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
    }


def labels(component: str, instance: str, version: str | None = None) -> dict[str, str]:
    """Selector labels plus the ones that describe: part-of (network policies use it)."""
    result = {
        **selector_labels(component, instance),
        "app.kubernetes.io/part-of": APP,
        "app.kubernetes.io/managed-by": "pulumi",
    }
    if version:
        result["app.kubernetes.io/version"] = version
    return result


@dataclass(frozen=True)
class AppEnv:
    """The COUPONSVC_* environment of the API, the writer and the migration.

    `plain` values are written into the pod spec; `secret_keys` are read from the Secret
    `secret_name` (same key as the variable), so no secret is ever in a pod spec.
    """

    plain: dict[str, str]
    secret_name: pulumi.Input[str]
    secret_keys: tuple[str, ...] = field(default=())

    def without_token_key(self) -> AppEnv:
        """For the writer and the migration: only `couponsvc serve` (and `token`)
        verify or sign tokens, so the others are not handed the JWT secret."""
        return replace(self, secret_keys=tuple(
            key for key in self.secret_keys if key != JWT_SECRET_KEY))

    def env_vars(self, **extra: str) -> list[k8s.core.v1.EnvVarArgs]:
        values = {**self.plain, **extra}
        env = [k8s.core.v1.EnvVarArgs(name=name, value=value) for name, value in values.items()]
        env += [
            k8s.core.v1.EnvVarArgs(
                name=key,
                value_from=k8s.core.v1.EnvVarSourceArgs(
                    secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(
                        name=self.secret_name, key=key)),
            )
            for key in self.secret_keys
        ]
        return env


def resource_requirements(resources: Resources) -> k8s.core.v1.ResourceRequirementsArgs:
    return k8s.core.v1.ResourceRequirementsArgs(
        requests={"cpu": resources.cpu_request, "memory": resources.memory_request},
        limits={"cpu": resources.cpu_limit, "memory": resources.memory_limit},
    )


def pod_security(uid: int = APP_UID) -> k8s.core.v1.PodSecurityContextArgs:
    return k8s.core.v1.PodSecurityContextArgs(
        run_as_non_root=True,
        run_as_user=uid,
        run_as_group=uid,
        fs_group=uid,
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )


def container_security(read_only_root: bool = True) -> k8s.core.v1.SecurityContextArgs:
    return k8s.core.v1.SecurityContextArgs(
        allow_privilege_escalation=False,
        read_only_root_filesystem=read_only_root,
        capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
    )


# The root file system is read-only; Python and its libraries may still want a /tmp.
TMP_VOLUME = k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs())
TMP_MOUNT = k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp")


def http_probe(path: str, port: str, period: int, failures: int,
               delay: int = 0) -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path=path, port=port),
        initial_delay_seconds=delay,
        period_seconds=period,
        timeout_seconds=2,
        failure_threshold=failures,
    )


def spread(component: str, instance: str) -> list[k8s.core.v1.TopologySpreadConstraintArgs]:
    """Spread one component's pods over zones and nodes, best effort."""
    selector = k8s.meta.v1.LabelSelectorArgs(match_labels=selector_labels(component, instance))
    return [
        k8s.core.v1.TopologySpreadConstraintArgs(
            max_skew=1, topology_key=key, when_unsatisfiable="ScheduleAnyway",
            label_selector=selector)
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
    ]


def app_pod_template(component: str, instance: str, version: str, *, metrics_port: int,
                     grace_seconds: int, container: k8s.core.v1.ContainerArgs
                     ) -> k8s.core.v1.PodTemplateSpecArgs:
    """The pod of a long-running component of the image (the API, the writer), so both are
    scraped, spread and locked down alike. The pod's one volume is TMP_VOLUME, and the
    template mounts it into `container` (TMP_MOUNT), which therefore sets no volume_mounts."""
    if container.volume_mounts is not None:
        raise ValueError(f"{component}: app_pod_template mounts the container's volumes "
                         "(TMP_MOUNT); the container sets none")
    container = copy.copy(container)  # the caller's stays as it was
    container.volume_mounts = [TMP_MOUNT]
    return k8s.core.v1.PodTemplateSpecArgs(
        metadata=k8s.meta.v1.ObjectMetaArgs(
            labels=labels(component, instance, version),
            annotations={
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(metrics_port),
                "prometheus.io/path": METRICS_PATH,
            },
        ),
        spec=k8s.core.v1.PodSpecArgs(
            security_context=pod_security(),
            termination_grace_period_seconds=grace_seconds,
            topology_spread_constraints=spread(component, instance),
            containers=[container],
            volumes=[TMP_VOLUME],
        ),
    )


def metadata(name: str | None, namespace: pulumi.Input[str],
             labels: dict[str, str]) -> k8s.meta.v1.ObjectMetaArgs:
    """Object metadata; no name: Pulumi names it (name-<random>) and replaces it on change."""
    return k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=labels)


def store_network_policy(name: str, namespace: pulumi.Input[str], component: str,
                         instance: str, ports: list[int],
                         opts: pulumi.ResourceOptions) -> k8s.networking.v1.NetworkPolicy:
    """An in-cluster store takes connections from this service's own pods only."""
    return k8s.networking.v1.NetworkPolicy(
        name,
        metadata=metadata(name, namespace, labels(component, instance)),
        spec=k8s.networking.v1.NetworkPolicySpecArgs(
            pod_selector=k8s.meta.v1.LabelSelectorArgs(
                match_labels=selector_labels(component, instance)),
            policy_types=["Ingress"],
            ingress=[k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                from_=[k8s.networking.v1.NetworkPolicyPeerArgs(
                    pod_selector=k8s.meta.v1.LabelSelectorArgs(
                        match_labels={"app.kubernetes.io/part-of": APP,
                                      "app.kubernetes.io/instance": instance}))],
                ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=port, protocol="TCP")
                       for port in ports],
            )],
        ),
        opts=opts,
    )


def store_statefulset(name: str, namespace: pulumi.Input[str], component: str, instance: str,
                      settings: StoreSettings, *, replicas: int, service_name: pulumi.Input[str],
                      uid: int, container: k8s.core.v1.ContainerArgs,
                      opts: pulumi.ResourceOptions,
                      volumes: list[k8s.core.v1.VolumeArgs] | None = None,
                      pod_management_policy: str | None = None) -> k8s.apps.v1.StatefulSet:
    """An in-cluster store's StatefulSet (Redis, Postgres), so both are built alike: one
    `container` run as the store image's `uid`, with the `data` claim of `settings`."""
    store_labels = labels(component, instance)
    return k8s.apps.v1.StatefulSet(
        name,
        metadata=metadata(name, namespace, store_labels),
        spec=k8s.apps.v1.StatefulSetSpecArgs(
            replicas=replicas,
            service_name=service_name,
            pod_management_policy=pod_management_policy,
            selector=k8s.meta.v1.LabelSelectorArgs(
                match_labels=selector_labels(component, instance)),
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(labels=store_labels),
                spec=k8s.core.v1.PodSpecArgs(
                    security_context=pod_security(uid),
                    containers=[container],
                    volumes=volumes,
                ),
            ),
            volume_claim_templates=[volume_claim(settings.storage, settings.storage_class)],
        ),
        opts=opts,
    )


def volume_claim(size: str, storage_class: str | None) -> k8s.core.v1.PersistentVolumeClaimArgs:
    """The `data` volume claim of a StatefulSet's pods."""
    return k8s.core.v1.PersistentVolumeClaimArgs(
        metadata=k8s.meta.v1.ObjectMetaArgs(name="data"),
        spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
            access_modes=["ReadWriteOnce"],
            storage_class_name=storage_class,
            resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": size}),
        ),
    )
