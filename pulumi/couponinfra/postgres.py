"""Postgres: a managed endpoint from config, or one StatefulSet in the namespace (dev)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import pulumi
import pulumi_kubernetes as k8s

from couponinfra.config import PostgresSettings, Resources
from couponinfra.workload import (
    container_security,
    labels,
    metadata,
    resource_requirements,
    selector_labels,
    store_network_policy,
    store_statefulset,
)

PORT = 5432
POSTGRES_UID = 999  # the postgres user of the official image
DEFAULT_RESOURCES = Resources("100m", "256Mi", "1", "512Mi")


@dataclass
class PostgresArgs:
    namespace: pulumi.Input[str]
    settings: PostgresSettings
    instance: str
    password: pulumi.Output[str]  # a secret: the in-cluster server's, or the managed one's


class Postgres(pulumi.ComponentResource):
    """The PostgreSQL the service keeps its durable record in: `url`, always a secret."""

    url: pulumi.Output[str]

    def __init__(self, name: str, args: PostgresArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("couponsvc:data:Postgres", name, None, opts)
        settings, store = args.settings, args.settings.store
        if store.managed:
            host: pulumi.Input[str] = store.host
        else:
            host = self._in_cluster(name, args)
        query = f"?sslmode={settings.sslmode}" if settings.sslmode else ""
        user = quote(settings.user, safe="")
        self.url = pulumi.Output.secret(pulumi.Output.all(host, args.password).apply(
            lambda parts: f"postgresql://{user}:{quote(parts[1], safe='')}@{parts[0]}:"
                          f"{store.port}/{settings.database}{query}"))
        self.register_outputs({"url": self.url})

    def _in_cluster(self, name: str, args: PostgresArgs) -> pulumi.Output[str]:
        """One server, its password from a Secret; returns the Service's host name."""
        settings, store, ns = args.settings, args.settings.store, args.namespace
        child = pulumi.ResourceOptions(parent=self)
        pg_labels = labels("postgres", args.instance)
        selector = selector_labels("postgres", args.instance)
        secret = k8s.core.v1.Secret(
            name,
            metadata=metadata(None, ns, pg_labels),
            string_data={"POSTGRES_PASSWORD": args.password},
            opts=child,
        )
        service = k8s.core.v1.Service(
            name,
            metadata=metadata(name, ns, pg_labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                cluster_ip="None",
                selector=selector,
                ports=[k8s.core.v1.ServicePortArgs(name="postgres", port=PORT)],
            ),
            opts=child,
        )
        store_network_policy(name, ns, "postgres", args.instance, [PORT], child)
        ready = ["pg_isready", "--host", "127.0.0.1", "--username", settings.user,
                 "--dbname", settings.database]
        scratch = [("run", "/var/run/postgresql"), ("tmp", "/tmp")]
        store_statefulset(
            name, ns, "postgres", args.instance, store, replicas=1,
            service_name=service.metadata.name, uid=POSTGRES_UID,
            container=k8s.core.v1.ContainerArgs(
                name="postgres",
                image=store.image,
                env=[
                    k8s.core.v1.EnvVarArgs(name="POSTGRES_USER", value=settings.user),
                    k8s.core.v1.EnvVarArgs(name="POSTGRES_DB", value=settings.database),
                    # A subdirectory: the volume's root may hold lost+found.
                    k8s.core.v1.EnvVarArgs(name="PGDATA", value="/var/lib/postgresql/data/pgdata"),
                    k8s.core.v1.EnvVarArgs(
                        name="POSTGRES_PASSWORD",
                        value_from=k8s.core.v1.EnvVarSourceArgs(
                            secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(
                                name=secret.metadata.name,
                                key="POSTGRES_PASSWORD"))),
                ],
                ports=[k8s.core.v1.ContainerPortArgs(name="postgres", container_port=PORT)],
                resources=resource_requirements(store.resources or DEFAULT_RESOURCES),
                readiness_probe=k8s.core.v1.ProbeArgs(
                    exec_=k8s.core.v1.ExecActionArgs(command=ready),
                    period_seconds=5, timeout_seconds=3),
                liveness_probe=k8s.core.v1.ProbeArgs(
                    exec_=k8s.core.v1.ExecActionArgs(command=ready),
                    initial_delay_seconds=30, period_seconds=10, timeout_seconds=3,
                    failure_threshold=6),
                security_context=container_security(),
                volume_mounts=[
                    k8s.core.v1.VolumeMountArgs(
                        name="data", mount_path="/var/lib/postgresql/data"),
                    *[k8s.core.v1.VolumeMountArgs(name=volume, mount_path=path)
                      for volume, path in scratch],
                ],
            ),
            volumes=[k8s.core.v1.VolumeArgs(
                name=volume, empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs())
                for volume, _ in scratch],
            opts=child,
        )
        return pulumi.Output.concat(
            service.metadata.name, ".", service.metadata.namespace, ".svc.cluster.local")
