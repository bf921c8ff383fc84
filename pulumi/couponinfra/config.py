"""Stack configuration: every `couponsvc:*` key, read once into frozen objects and checked.

Plain settings come from the stack file (Pulumi.<stack>.yaml); secrets are read only as
secret Outputs (`require_secret`), never as plain strings, so they stay encrypted in the
state and masked in every diff.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import pulumi

from couponinfra.sections import ConfigError, Section, quantity

__all__ = ["ConfigError", "quantity"]  # re-exported for the tests and callers

NAMESPACE = "couponsvc"  # the config namespace: keys are `couponsvc:<key>`
ENVIRONMENTS = ("dev", "qa", "staging", "prod")
# In-cluster stores are for dev and qa only; these environments need managed ones.
MANAGED_ONLY = ("staging", "prod")
# Set with `pulumi config set --secret couponsvc:<key> ...`; stored as `secure:` values.
SECRET_KEYS = ("jwtSecret", "postgresPassword", "redisPassword")
PLAIN_KEYS = (
    "environment", "region", "kubeContext", "namespace", "image", "imageTag", "keyPrefix",
    "jwtAudience", "jwtIssuer", "jwtPublicKey", "api", "writer", "redis", "postgres",
)
MIN_JWT_SECRET_BYTES = 32  # what the service itself refuses to start without

_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Resources:
    """Requests and limits of one container."""

    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str

    @classmethod
    def parse(cls, section: Section) -> Resources:
        requests, limits = section.section("requests"), section.section("limits")
        resources = cls(requests.quantity("cpu"), requests.quantity("memory"),
                        limits.quantity("cpu"), limits.quantity("memory"))
        requests.done()
        limits.done()
        section.done()
        for kind, request, limit in (("cpu", resources.cpu_request, resources.cpu_limit),
                                     ("memory", resources.memory_request, resources.memory_limit)):
            if quantity(request) > quantity(limit):
                raise ConfigError(f"{section.where}: {kind} request {request} is over the "
                                  f"limit {limit}")
        return resources


@dataclass(frozen=True)
class ApiSettings:
    """The HTTP API (`couponsvc serve`): autoscaled between min and max replicas."""

    min_replicas: int
    max_replicas: int
    target_cpu_utilization: int  # percent of the CPU request
    max_unavailable: int  # pods a voluntary disruption (a node drain) may take at once
    resources: Resources
    # The ingress's addresses (IPs or CIDRs, comma-separated) whose X-Forwarded-For
    # the API believes (uvicorn's FORWARDED_ALLOW_IPS): without them every end user
    # seems to come from the ingress, and the per-address limits become one
    # limit for all of them.
    trusted_proxies: str | None = None

    @classmethod
    def parse(cls, section: Section) -> ApiSettings:
        api = cls(
            min_replicas=section.integer("minReplicas", minimum=1),
            max_replicas=section.integer("maxReplicas", minimum=1),
            target_cpu_utilization=section.integer("targetCpuUtilization", 70, minimum=1),
            max_unavailable=section.integer("maxUnavailable", 1, minimum=1),
            resources=Resources.parse(section.section("resources")),
            trusted_proxies=section.optional_text("trustedProxies"),
        )
        section.done()
        for proxy in api.trusted_proxies.split(",") if api.trusted_proxies else []:
            try:
                ipaddress.ip_network(proxy.strip())
            except ValueError:
                raise ConfigError(f"couponsvc:api.trustedProxies: {proxy.strip()!r} is not an "
                                  "IP address or network") from None
        if api.min_replicas > api.max_replicas:
            raise ConfigError(f"couponsvc:api.minReplicas ({api.min_replicas}) is over "
                              f"maxReplicas ({api.max_replicas})")
        if api.target_cpu_utilization > 100:
            raise ConfigError("couponsvc:api.targetCpuUtilization is a percentage (1-100)")
        return api


@dataclass(frozen=True)
class WriterSettings:
    """The outbox writer (`couponsvc writer`): several may run at once."""

    replicas: int
    resources: Resources

    @classmethod
    def parse(cls, section: Section) -> WriterSettings:
        writer = cls(section.integer("replicas", minimum=1),
                     Resources.parse(section.section("resources")))
        section.done()
        return writer


@dataclass(frozen=True)
class StoreSettings:
    """Where a store lives: a managed endpoint, or a StatefulSet in the namespace."""

    managed: bool
    host: str  # managed only
    port: int
    storage: str  # in-cluster only: the volume size
    storage_class: str | None
    image: str
    resources: Resources | None  # in-cluster only; None: the component's default


@dataclass(frozen=True)
class RedisSettings:
    """The `couponsvc:redis` section: where Redis lives (`store`), and how it is run."""

    store: StoreSettings
    cluster: bool  # Redis Cluster (COUPONSVC_REDIS_CLUSTER=true)
    tls: bool  # managed only: rediss://
    nodes: int  # in-cluster only: primaries and replicas together
    replicas_per_primary: int

    @classmethod
    def parse(cls, section: Section) -> RedisSettings:
        store = _store(section, port=6379, storage="1Gi", image="redis:7.2")
        redis = cls(
            store=store,
            cluster=section.flag("cluster", True),
            tls=section.flag("tls", store.managed),
            nodes=section.integer("nodes", 6, minimum=1),
            replicas_per_primary=section.integer("replicasPerPrimary", 1),
        )
        section.done()
        if not store.managed:
            shard = 1 + redis.replicas_per_primary
            if not redis.cluster:
                raise ConfigError("couponsvc:redis: the in-cluster Redis is a Redis Cluster "
                                  "(cluster: true)")
            if redis.nodes % shard or redis.nodes // shard < 3:
                raise ConfigError(f"couponsvc:redis.nodes ({redis.nodes}) must be a multiple "
                                  f"of {shard} giving at least 3 primaries")
        return redis


@dataclass(frozen=True)
class PostgresSettings:
    """The `couponsvc:postgres` section: where PostgreSQL lives (`store`), and the database."""

    store: StoreSettings
    database: str
    user: str
    sslmode: str | None  # managed: require / verify-ca / verify-full

    @classmethod
    def parse(cls, section: Section) -> PostgresSettings:
        postgres = cls(
            store=_store(section, port=5432, storage="5Gi", image="postgres:16"),
            database=section.text("database", "couponsvc"),
            user=section.text("user", "couponsvc"),
            sslmode=section.optional_text("sslmode"),
        )
        section.done()
        return postgres


def _store(section: Section, *, port: int, storage: str, image: str) -> StoreSettings:
    """The StoreSettings of a `redis` or `postgres` section: both stores read it alike, with
    their own defaults; each parse reads its own fields next to it."""
    mode = section.text("mode")
    if mode not in ("managed", "in-cluster"):
        raise ConfigError(f"{section.where}.mode must be managed or in-cluster")
    managed = mode == "managed"
    return StoreSettings(
        managed=managed,
        host=_host(section, managed),
        port=section.integer("port", port, minimum=1),
        storage=section.text("storage", storage),
        storage_class=section.optional_text("storageClass"),
        image=section.text("image", image),
        resources=_optional_resources(section),
    )


def _host(section: Section, managed: bool) -> str:
    host = section.optional_text("host")
    if managed and host is None:
        raise ConfigError(f"{section.where}.host is required with mode: managed")
    if not managed and host is not None:
        raise ConfigError(f"{section.where}.host is for mode: managed only")
    return host or ""


def _optional_resources(section: Section) -> Resources | None:
    resources = section.optional_section("resources")
    return None if resources is None else Resources.parse(resources)


@dataclass(frozen=True)
class StackConfig:
    """Everything but the secrets, for one stack (one environment in one region)."""

    environment: str
    region: str
    kube_context: str | None  # None: the kubeconfig's current context
    namespace: str
    image: str  # the repository, without a tag
    image_tag: str  # the commit the image was built from
    key_prefix: str
    jwt_audience: str | None
    jwt_issuer: str | None
    jwt_public_key: str | None  # PEM: RS256/ES256 instead of the HS256 jwtSecret
    api: ApiSettings
    writer: WriterSettings
    redis: RedisSettings
    postgres: PostgresSettings

    @property
    def image_ref(self) -> str:
        return f"{self.image}:{self.image_tag}"

    @classmethod
    def load(cls, config: pulumi.Config | None = None) -> StackConfig:
        config = config or pulumi.Config(NAMESPACE)
        stack = cls(
            environment=config.require("environment"),
            region=config.require("region"),
            kube_context=config.get("kubeContext"),
            namespace=config.get("namespace") or "couponsvc",
            image=config.require("image"),
            image_tag=config.require("imageTag"),
            key_prefix=config.get("keyPrefix") or "cb",
            jwt_audience=config.get("jwtAudience"),
            jwt_issuer=config.get("jwtIssuer"),
            jwt_public_key=config.get("jwtPublicKey"),
            api=ApiSettings.parse(Section(config.require_object("api"), "couponsvc:api")),
            writer=WriterSettings.parse(
                Section(config.require_object("writer"), "couponsvc:writer")),
            redis=RedisSettings.parse(Section(config.require_object("redis"), "couponsvc:redis")),
            postgres=PostgresSettings.parse(
                Section(config.require_object("postgres"), "couponsvc:postgres")),
        )
        stack.validate()
        return stack

    def validate(self) -> None:
        if self.environment not in ENVIRONMENTS:
            raise ConfigError(f"couponsvc:environment must be one of {', '.join(ENVIRONMENTS)}")
        if not _DNS_LABEL.match(self.namespace):
            raise ConfigError(f"couponsvc:namespace {self.namespace!r} is not a DNS label")
        if ":" in self.image.rsplit("/", 1)[-1] or "@" in self.image:
            raise ConfigError("couponsvc:image is the repository alone; the tag is imageTag")
        if not _COMMIT.match(self.image_tag):
            raise ConfigError(f"couponsvc:imageTag must be the image's git commit (7-40 "
                              f"lowercase hex digits), got {self.image_tag!r}")
        if not self.key_prefix or any(c in self.key_prefix for c in "{}: "):
            raise ConfigError("couponsvc:keyPrefix must be non-empty, without {, }, : or spaces")
        if self.environment in MANAGED_ONLY:
            self._validate_production()

    def _validate_production(self) -> None:
        env = self.environment
        if not (self.redis.store.managed and self.postgres.store.managed):
            raise ConfigError(f"{env}: Redis and PostgreSQL must be managed endpoints "
                              "(mode: managed); in-cluster stores are for dev and qa")
        if not self.redis.tls:
            raise ConfigError(f"{env}: couponsvc:redis.tls must be true")
        if self.postgres.sslmode not in ("require", "verify-ca", "verify-full"):
            raise ConfigError(f"{env}: couponsvc:postgres.sslmode must be require, verify-ca "
                              "or verify-full")
        if self.api.min_replicas < 2:
            raise ConfigError(f"{env}: couponsvc:api.minReplicas must be at least 2")


@dataclass(frozen=True)
class StackSecrets:
    """The stack's secrets, as secret Outputs only."""

    jwt_secret: pulumi.Output[str] | None  # None when jwtPublicKey is set
    postgres_password: pulumi.Output[str]
    redis_password: pulumi.Output[str] | None  # managed Redis with AUTH only

    @classmethod
    def load(cls, stack: StackConfig, config: pulumi.Config | None = None) -> StackSecrets:
        config = config or pulumi.Config(NAMESPACE)
        jwt_secret = None
        if stack.jwt_public_key is None:
            jwt_secret = config.require_secret("jwtSecret").apply(_strong_jwt_secret)
        return cls(
            jwt_secret=jwt_secret,
            postgres_password=config.require_secret("postgresPassword"),
            redis_password=(config.get_secret("redisPassword") if stack.redis.store.managed
                            else None),
        )


def _strong_jwt_secret(secret: str) -> str:
    if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        # The message names the key, never the value.
        raise ConfigError(f"couponsvc:jwtSecret must be at least {MIN_JWT_SECRET_BYTES} bytes")
    return secret
