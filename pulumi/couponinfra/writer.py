"""OutboxWriter: `couponsvc writer`, draining the Redis outbox streams into PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from couponinfra.config import WriterSettings
from couponinfra.workload import (
    METRICS_PATH,
    WRITER_METRICS_PORT,
    AppEnv,
    app_pod_template,
    container_security,
    http_probe,
    labels,
    metadata,
    resource_requirements,
    selector_labels,
)

# The writer acknowledges a batch only once Postgres has it; an entry left unacknowledged
# by a stopped writer is reclaimed by the others, so a short grace period loses nothing.
GRACE_SECONDS = 20


@dataclass
class OutboxWriterArgs:
    namespace: pulumi.Input[str]
    image: str  # repository:commit
    version: str
    instance: str
    env: AppEnv
    settings: WriterSettings
    # Created and ready before the writer starts (the migration Job, the stores).
    after: Sequence[pulumi.Resource] = field(default_factory=list)


class OutboxWriter(pulumi.ComponentResource):
    """A Deployment of writers; several may run at once (consumer group, XAUTOCLAIM)."""

    deployment: k8s.apps.v1.Deployment

    def __init__(self, name: str, args: OutboxWriterArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("couponsvc:app:OutboxWriter", name, None, opts)
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-writer",
            metadata=metadata(f"{name}-writer", args.namespace, labels("writer", args.instance)),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=args.settings.replicas,
                selector=k8s.meta.v1.LabelSelectorArgs(
                    match_labels=selector_labels("writer", args.instance)),
                template=app_pod_template(
                    "writer", args.instance, args.version, metrics_port=WRITER_METRICS_PORT,
                    grace_seconds=GRACE_SECONDS, container=k8s.core.v1.ContainerArgs(
                        name="writer",
                        image=args.image,
                        args=["writer", "--metrics-port", str(WRITER_METRICS_PORT)],
                        ports=[k8s.core.v1.ContainerPortArgs(
                            name="metrics", container_port=WRITER_METRICS_PORT,
                            protocol="TCP")],
                        # The metrics server binds COUPONSVC_HOST: every interface.
                        env=args.env.env_vars(COUPONSVC_HOST="0.0.0.0"),
                        resources=resource_requirements(args.settings.resources),
                        # It serves no API; its metrics endpoint shows the process is up.
                        liveness_probe=http_probe(METRICS_PATH, "metrics", 15, 3, delay=10),
                        security_context=container_security(),
                    )),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.after)),
        )
        self.register_outputs({"deploymentName": self.deployment.metadata.name})
