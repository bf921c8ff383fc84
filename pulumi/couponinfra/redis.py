"""RedisCluster: a managed endpoint from config, or a Redis Cluster StatefulSet (dev, qa)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import pulumi
import pulumi_kubernetes as k8s

from couponinfra.config import RedisSettings, Resources
from couponinfra.workload import (
    container_security,
    labels,
    metadata,
    pod_security,
    resource_requirements,
    selector_labels,
    store_network_policy,
    store_statefulset,
)

CLIENT_PORT = 6379
BUS_PORT = 16379  # the cluster bus: the client port + 10000
REDIS_UID = 999  # the redis user of the official image
DEFAULT_RESOURCES = Resources("100m", "128Mi", "500m", "256Mi")

# Waits for every node, then forms the cluster once; a formed cluster is left alone, so the
# Job can run again. Nodes announce their stable StatefulSet host names to clients.
CLUSTER_CREATE = """\
set -eu
hosts=""
i=0
while [ "$i" -lt "$NODES" ]; do
  host="$SET-$i.$NODES_SERVICE.$NAMESPACE.svc.cluster.local"
  until redis-cli -h "$host" -p 6379 ping 2>/dev/null | grep -q PONG; do
    echo "waiting for $host"
    sleep 2
  done
  hosts="$hosts $host:6379"
  i=$((i + 1))
done
first="$SET-0.$NODES_SERVICE.$NAMESPACE.svc.cluster.local"
if redis-cli -h "$first" cluster info | grep -q '^cluster_state:ok'; then
  echo "the cluster is already formed"
  exit 0
fi
redis-cli --cluster create $hosts --cluster-replicas "$REPLICAS" --cluster-yes
until redis-cli -h "$first" cluster info | grep -q '^cluster_state:ok'; do sleep 1; done
echo "the cluster is formed"
"""


@dataclass
class RedisClusterArgs:
    namespace: pulumi.Input[str]
    settings: RedisSettings
    instance: str
    password: pulumi.Output[str] | None = None  # managed endpoints with AUTH


class RedisCluster(pulumi.ComponentResource):
    """The Redis the service uses: `url` (a secret when it carries a password), `cluster`."""

    url: pulumi.Output[str]
    cluster: bool

    def __init__(self, name: str, args: RedisClusterArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("couponsvc:data:RedisCluster", name, None, opts)
        self.cluster = args.settings.cluster
        if args.settings.store.managed:
            self.url = _managed_url(args.settings, args.password)
        else:
            self.url = self._in_cluster(name, args)
        self.register_outputs({"url": self.url, "cluster": self.cluster})

    def _in_cluster(self, name: str, args: RedisClusterArgs) -> pulumi.Output[str]:
        settings, store, ns = args.settings, args.settings.store, args.namespace
        child = pulumi.ResourceOptions(parent=self)
        redis_labels = labels("redis", args.instance)
        selector = selector_labels("redis", args.instance)
        nodes_service = f"{name}-nodes"

        # Per-node DNS names; not-ready nodes are published so they can meet each other.
        k8s.core.v1.Service(
            nodes_service,
            metadata=metadata(nodes_service, ns, redis_labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                cluster_ip="None",
                publish_not_ready_addresses=True,
                selector=selector,
                ports=[k8s.core.v1.ServicePortArgs(name="client", port=CLIENT_PORT),
                       k8s.core.v1.ServicePortArgs(name="bus", port=BUS_PORT)],
            ),
            opts=child,
        )
        # The address clients start from; the cluster client then learns every node.
        client = k8s.core.v1.Service(
            name,
            metadata=metadata(name, ns, redis_labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                selector=selector,
                ports=[k8s.core.v1.ServicePortArgs(
                    name="client", port=CLIENT_PORT, target_port="client")],
            ),
            opts=child,
        )
        store_network_policy(name, ns, "redis", args.instance, [CLIENT_PORT, BUS_PORT], child)
        node_env = [
            k8s.core.v1.EnvVarArgs(name="POD_NAME", value_from=_field("metadata.name")),
            k8s.core.v1.EnvVarArgs(name="POD_NAMESPACE", value_from=_field("metadata.namespace")),
        ]
        statefulset = store_statefulset(
            name, ns, "redis", args.instance, store, replicas=settings.nodes,
            service_name=nodes_service, uid=REDIS_UID, pod_management_policy="Parallel",
            container=k8s.core.v1.ContainerArgs(
                name="redis",
                image=store.image,
                env=node_env,
                args=[
                    "redis-server",
                    "--port", str(CLIENT_PORT),
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "/data/nodes.conf",
                    "--cluster-node-timeout", "5000",
                    "--cluster-announce-hostname",
                    f"$(POD_NAME).{nodes_service}.$(POD_NAMESPACE).svc.cluster.local",
                    "--cluster-preferred-endpoint-type", "hostname",
                    # As in production: every write in the AOF, fsync each second,
                    # rewritten when it is 5x its last compact size, without LZF
                    # (README, "Redis persistence").
                    "--appendonly", "yes",
                    "--appendfsync", "everysec",
                    "--auto-aof-rewrite-percentage", "400",
                    "--rdbcompression", "no",
                    "--dir", "/data",
                    "--protected-mode", "no",
                ],
                ports=[
                    k8s.core.v1.ContainerPortArgs(name="client", container_port=CLIENT_PORT),
                    k8s.core.v1.ContainerPortArgs(name="bus", container_port=BUS_PORT),
                ],
                resources=resource_requirements(store.resources or DEFAULT_RESOURCES),
                readiness_probe=k8s.core.v1.ProbeArgs(
                    exec_=k8s.core.v1.ExecActionArgs(command=["redis-cli", "ping"]),
                    period_seconds=5, timeout_seconds=2),
                liveness_probe=k8s.core.v1.ProbeArgs(
                    tcp_socket=k8s.core.v1.TCPSocketActionArgs(port="client"),
                    initial_delay_seconds=10, period_seconds=10),
                security_context=container_security(),
                volume_mounts=[k8s.core.v1.VolumeMountArgs(name="data", mount_path="/data")],
            ),
            opts=child,
        )
        job_labels = labels("redis-cluster-create", args.instance)
        k8s.batch.v1.Job(
            f"{name}-cluster-create",
            metadata=metadata(None, ns, job_labels),
            spec=k8s.batch.v1.JobSpecArgs(
                backoff_limit=6,
                active_deadline_seconds=600,  # Pulumi waits 10 minutes for a Job
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=job_labels),
                    spec=k8s.core.v1.PodSpecArgs(
                        restart_policy="Never",
                        security_context=pod_security(REDIS_UID),
                        containers=[k8s.core.v1.ContainerArgs(
                            name="cluster-create",
                            image=store.image,
                            command=["sh", "-c", CLUSTER_CREATE],
                            env=[
                                k8s.core.v1.EnvVarArgs(name="NODES", value=str(settings.nodes)),
                                k8s.core.v1.EnvVarArgs(
                                    name="REPLICAS", value=str(settings.replicas_per_primary)),
                                k8s.core.v1.EnvVarArgs(name="SET", value=name),
                                k8s.core.v1.EnvVarArgs(name="NODES_SERVICE", value=nodes_service),
                                k8s.core.v1.EnvVarArgs(
                                    name="NAMESPACE", value_from=_field("metadata.namespace")),
                            ],
                            resources=resource_requirements(Resources("50m", "32Mi", "200m",
                                                                      "64Mi")),
                            security_context=container_security(),
                        )],
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                depends_on=[statefulset], replace_on_changes=["spec"])),
        )
        return pulumi.Output.concat(
            "redis://", client.metadata.name, ".", client.metadata.namespace,
            f".svc.cluster.local:{CLIENT_PORT}/0")


def _managed_url(settings: RedisSettings, password: pulumi.Output[str] | None
                 ) -> pulumi.Output[str]:
    scheme = "rediss" if settings.tls else "redis"
    address = f"{settings.store.host}:{settings.store.port}/0"
    if password is None:
        return pulumi.Output.from_input(f"{scheme}://{address}")
    # A secret Output stays secret through apply.
    return password.apply(lambda value: f"{scheme}://:{quote(value, safe='')}@{address}")


def _field(path: str) -> k8s.core.v1.EnvVarSourceArgs:
    return k8s.core.v1.EnvVarSourceArgs(
        field_ref=k8s.core.v1.ObjectFieldSelectorArgs(field_path=path))
