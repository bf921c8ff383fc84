"""The whole stack: one namespace, the stores, the app Secret, the API and the writer."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from couponinfra.config import StackConfig, StackSecrets
from couponinfra.postgres import Postgres, PostgresArgs
from couponinfra.redis import RedisCluster, RedisClusterArgs
from couponinfra.service import CouponService, CouponServiceArgs
from couponinfra.workload import APP, JWT_SECRET_KEY, AppEnv, labels, metadata
from couponinfra.writer import OutboxWriter, OutboxWriterArgs


def deploy() -> None:
    """Declares every resource of the current stack, from its config (see README.md)."""
    stack = StackConfig.load()
    secrets = StackSecrets.load(stack)
    instance = pulumi.get_stack()

    # One stack, one cluster: the kubeconfig context names it (None: the current one).
    provider = k8s.Provider("k8s", context=stack.kube_context)
    on_cluster = pulumi.ResourceOptions(provider=provider)
    components = pulumi.ResourceOptions(providers=[provider])

    namespace = k8s.core.v1.Namespace(
        APP,
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=stack.namespace,
            labels={
                **labels("namespace", instance),
                # Every pod here runs as non-root, drops all capabilities, uses seccomp.
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        ),
        opts=on_cluster,
    )
    ns = namespace.metadata.name

    redis = RedisCluster(
        "redis", RedisClusterArgs(ns, stack.redis, instance, secrets.redis_password),
        opts=components)
    postgres = Postgres(
        "postgres", PostgresArgs(ns, stack.postgres, instance, secrets.postgres_password),
        opts=components)

    # The service's secrets, read by the pods through secretKeyRef. The name is Pulumi's
    # (couponsvc-env-<random>): a changed secret is a new Secret, so the pods roll.
    secret_data: dict[str, pulumi.Input[str]] = {
        "COUPONSVC_REDIS_URL": redis.url,
        "COUPONSVC_DATABASE_URL": postgres.url,
    }
    if secrets.jwt_secret is not None:
        secret_data[JWT_SECRET_KEY] = secrets.jwt_secret
    app_secret = k8s.core.v1.Secret(
        f"{APP}-env",
        metadata=metadata(None, ns, labels("config", instance)),
        type="Opaque",
        string_data=secret_data,
        opts=on_cluster,
    )
    plain = {
        # Production mode everywhere: a real secret and a database are required.
        "COUPONSVC_ENV": "prod",
        "COUPONSVC_REDIS_CLUSTER": "true" if redis.cluster else "false",
        # A cluster has a replica per primary: acknowledge a change only once it
        # has it, or a failover can lose acknowledged changes (docs/scaling.md).
        "COUPONSVC_REDIS_WAIT_REPLICAS": "1" if redis.cluster else "0",
        "COUPONSVC_KEY_PREFIX": stack.key_prefix,
    }
    if stack.api.trusted_proxies:
        plain["FORWARDED_ALLOW_IPS"] = stack.api.trusted_proxies
    for variable, value in (("COUPONSVC_JWT_AUDIENCE", stack.jwt_audience),
                            ("COUPONSVC_JWT_ISSUER", stack.jwt_issuer),
                            ("COUPONSVC_JWT_PUBLIC_KEY", stack.jwt_public_key)):
        if value:
            plain[variable] = value
    env = AppEnv(plain=plain, secret_name=app_secret.metadata.name,
                 secret_keys=tuple(secret_data))

    stores: list[pulumi.Resource] = [redis, postgres]
    api = CouponService(APP, CouponServiceArgs(
        namespace=ns, image=stack.image_ref, version=stack.image_tag, instance=instance,
        env=env, settings=stack.api, after=stores,
    ), opts=components)
    OutboxWriter(APP, OutboxWriterArgs(
        namespace=ns, image=stack.image_ref, version=stack.image_tag, instance=instance,
        env=env.without_token_key(), settings=stack.writer, after=[*stores, api.migrate_job],
    ), opts=components)

    pulumi.export("environment", stack.environment)
    pulumi.export("region", stack.region)
    pulumi.export("namespace", ns)
    pulumi.export("image", stack.image_ref)
    pulumi.export("apiService", api.service.metadata.name)
    pulumi.export("apiReplicas", {"min": stack.api.min_replicas, "max": stack.api.max_replicas})
    pulumi.export("writerReplicas", stack.writer.replicas)
    pulumi.export("redis", "managed" if stack.redis.store.managed else "in-cluster")
    pulumi.export("postgres", "managed" if stack.postgres.store.managed else "in-cluster")
