"""Configuration: one frozen object, read from the environment once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from limits import parse_many

MIN_SECRET_BYTES = 32
# Used only when COUPONSVC_ENV=dev and no secret is given; never valid elsewhere.
DEV_SECRET = "dev-only-secret-do-not-use-in-production"
# prod: the API needs a database, and whatever uses the JWT key (serve, token)
# a strong secret; test: the strong secret only; dev: neither (a fixed, public
# secret stands in).
ENVIRONMENTS = ("prod", "test", "dev")
# The span COUPONSVC_IDEMPOTENCY_TTL_SECONDS may take: 5 minutes to 7 days.
MIN_IDEMPOTENCY_TTL_SECONDS = 300
MAX_IDEMPOTENCY_TTL_SECONDS = 7 * 24 * 3600


class SettingsError(ValueError):
    """The environment does not describe a runnable service."""


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    # A Redis Cluster (any node in redis_url): redis-py's cluster client.
    redis_cluster: bool = False
    # Empty: no durable record (tests and dev only; refused in production).
    database_url: str = field(default="", repr=False)
    host: str = "127.0.0.1"
    port: int = 8000
    # API processes `couponsvc serve` runs (uvicorn workers sharing the port).
    workers: int = 1
    env: str = "prod"
    jwt_secret: str = field(default="", repr=False)
    jwt_public_key: str = field(default="", repr=False)
    jwt_algorithm: str = "HS256"
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    key_prefix: str = "cb"
    max_body_bytes: int = 16 * 1024 * 1024
    max_upload_codes: int = 1_000_000
    # How long an Idempotency-Key and its stored answer are kept: about 700
    # bytes of Redis per keyed request (docs/scaling.md, "Memory").
    idempotency_ttl_seconds: int = 24 * 3600
    redis_timeout_seconds: float = 2.0
    # Replicas that must confirm each change before it is acknowledged (0: none).
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 500
    # "resp": the small auto-pipelining client (resp.py); "redis-py": redis-py
    # pipelines (coalesce.py), e.g. to compare them in a benchmark.
    hot_path_client: str = "resp"
    # Abuse limits (ratelimit.py), in limits' notation ("30/minute;500/hour").
    rate_limits: bool = True
    rate_limit_assign: str = "30/minute"
    rate_limit_assign_address: str = "120/minute"
    rate_limit_misses: str = "10/minute;50/hour"
    rate_limit_misses_address: str = "30/minute;200/hour"
    # Deadlines of one request (serving.py): its head from the connection (or its
    # first byte), its body from the end of the head; then an idle kept-alive
    # connection is closed after keep_alive_seconds (uvicorn's own timer).
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 60.0
    keep_alive_seconds: int = 5

    @property
    def dev(self) -> bool:
        return self.env == "dev"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 uses_jwt_key: bool = True, serves_api: bool = True) -> Settings:
        """The settings in `environ` (default: the process's), checked. A
        command that never sees a token (the writer, migrate, the operator
        tools) passes `uses_jwt_key=False` and needs no JWT secret; one
        that does not serve the API (`token`, ...) passes `serves_api=False`
        and may run without a database even in prod (those that use one say
        so when it is missing)."""
        env = os.environ if environ is None else environ

        def get(name: str, default: str = "") -> str:
            return env.get(f"COUPONSVC_{name}", default).strip()

        defaults = cls()
        public_key = get("JWT_PUBLIC_KEY")
        environment = get("ENV", defaults.env)
        if environment not in ENVIRONMENTS:
            raise SettingsError(f"COUPONSVC_ENV must be one of {', '.join(ENVIRONMENTS)}, "
                                f"got {environment!r}")
        dev = environment == "dev"
        secret = get("JWT_SECRET") or (DEV_SECRET if dev and not public_key else "")
        settings = cls(
            redis_url=get("REDIS_URL", defaults.redis_url),
            redis_cluster=_switch(get("REDIS_CLUSTER") or "off", "COUPONSVC_REDIS_CLUSTER"),
            database_url=get("DATABASE_URL"),
            host=get("HOST", defaults.host),
            port=_int(get("PORT", str(defaults.port)), "COUPONSVC_PORT"),
            workers=_int(get("WORKERS", str(defaults.workers)), "COUPONSVC_WORKERS"),
            env=environment,
            jwt_secret=secret,
            jwt_public_key=public_key,
            jwt_algorithm=get("JWT_ALGORITHM", _default_algorithm(public_key)),
            jwt_audience=get("JWT_AUDIENCE") or None,
            jwt_issuer=get("JWT_ISSUER") or None,
            key_prefix=get("KEY_PREFIX", defaults.key_prefix),
            hot_path_client=get("HOT_PATH_CLIENT", defaults.hot_path_client),
            redis_wait_replicas=_int(get("REDIS_WAIT_REPLICAS", "0"),
                                     "COUPONSVC_REDIS_WAIT_REPLICAS"),
            redis_wait_timeout_ms=_int(get("REDIS_WAIT_TIMEOUT_MS", "500"),
                                       "COUPONSVC_REDIS_WAIT_TIMEOUT_MS"),
            max_body_bytes=_int(get("MAX_BODY_BYTES", str(defaults.max_body_bytes)),
                                "COUPONSVC_MAX_BODY_BYTES"),
            rate_limits=_switch(get("RATE_LIMITS") or "on", "COUPONSVC_RATE_LIMITS"),
            rate_limit_assign=get("RATE_LIMIT_ASSIGN", defaults.rate_limit_assign),
            rate_limit_assign_address=get("RATE_LIMIT_ASSIGN_ADDRESS",
                                          defaults.rate_limit_assign_address),
            rate_limit_misses=get("RATE_LIMIT_MISSES", defaults.rate_limit_misses),
            rate_limit_misses_address=get("RATE_LIMIT_MISSES_ADDRESS",
                                          defaults.rate_limit_misses_address),
            header_timeout_seconds=_seconds(get("HEADER_TIMEOUT_SECONDS", "10"),
                                            "COUPONSVC_HEADER_TIMEOUT_SECONDS"),
            body_timeout_seconds=_seconds(get("BODY_TIMEOUT_SECONDS", "60"),
                                          "COUPONSVC_BODY_TIMEOUT_SECONDS"),
            keep_alive_seconds=_int(get("KEEP_ALIVE_SECONDS", "5"),
                                    "COUPONSVC_KEEP_ALIVE_SECONDS"),
            max_upload_codes=_int(get("MAX_UPLOAD_CODES", str(defaults.max_upload_codes)),
                                  "COUPONSVC_MAX_UPLOAD_CODES"),
            idempotency_ttl_seconds=_int(
                get("IDEMPOTENCY_TTL_SECONDS", str(defaults.idempotency_ttl_seconds)),
                "COUPONSVC_IDEMPOTENCY_TTL_SECONDS"),
        )
        settings.validate(uses_jwt_key=uses_jwt_key, serves_api=serves_api)
        return settings

    def validate(self, *, uses_jwt_key: bool = True, serves_api: bool = True) -> None:
        """Refuse settings that cannot work, an API in prod without its durable
        record, and (where tokens are verified) a key that anyone could guess,
        outside dev mode."""
        if serves_api and self.env == "prod" and not self.database_url:
            raise SettingsError("COUPONSVC_DATABASE_URL is required when COUPONSVC_ENV=prod")
        if self.workers < 1:
            raise SettingsError(f"COUPONSVC_WORKERS must be at least 1, got {self.workers}")
        if not 0 <= self.port <= 65535:  # 0: a free port the system picks
            raise SettingsError(f"COUPONSVC_PORT must be from 0 to 65535, got {self.port}")
        # A malformed address is a mistake to stop on, not an outage to retry.
        _check_url("COUPONSVC_REDIS_URL", self.redis_url, ("redis", "rediss", "unix"))
        if self.database_url:
            _check_url("COUPONSVC_DATABASE_URL", self.database_url, ("postgres", "postgresql"))
        if not MIN_IDEMPOTENCY_TTL_SECONDS <= self.idempotency_ttl_seconds \
                <= MAX_IDEMPOTENCY_TTL_SECONDS:
            # Under a few minutes a client's own retries outlive the key; a
            # create's key must also outlast the 30-s hold on making its book.
            raise SettingsError(
                f"COUPONSVC_IDEMPOTENCY_TTL_SECONDS must be from {MIN_IDEMPOTENCY_TTL_SECONDS} "
                f"to {MAX_IDEMPOTENCY_TTL_SECONDS}, got {self.idempotency_ttl_seconds}")
        if self.hot_path_client not in ("resp", "redis-py"):
            raise SettingsError("COUPONSVC_HOT_PATH_CLIENT must be resp or redis-py")
        if not self.key_prefix or any(c in self.key_prefix for c in "{}: "):
            raise SettingsError("COUPONSVC_KEY_PREFIX must be non-empty, without {, }, : or spaces")
        for name, value in (("ASSIGN", self.rate_limit_assign),
                            ("ASSIGN_ADDRESS", self.rate_limit_assign_address),
                            ("MISSES", self.rate_limit_misses),
                            ("MISSES_ADDRESS", self.rate_limit_misses_address)):
            try:
                parse_many(value)
            except ValueError:
                raise SettingsError(f"COUPONSVC_RATE_LIMIT_{name} is not a rate limit like "
                                    f"'30/minute' or '10/minute;50/hour': {value!r}") from None
        if uses_jwt_key:
            self._validate_token_key()

    def _validate_token_key(self) -> None:
        if self.jwt_public_key:
            if self.jwt_algorithm not in ("RS256", "ES256"):
                raise SettingsError(
                    "COUPONSVC_JWT_ALGORITHM must be RS256 or ES256 with a public key")
            return
        if self.jwt_algorithm != "HS256":
            raise SettingsError(
                "COUPONSVC_JWT_ALGORITHM other than HS256 needs COUPONSVC_JWT_PUBLIC_KEY")
        weak = len(self.jwt_secret.encode()) < MIN_SECRET_BYTES or self.jwt_secret == DEV_SECRET
        if weak and not self.dev:
            raise SettingsError(
                f"COUPONSVC_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes "
                "(or set COUPONSVC_ENV=dev for local use)"
            )


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    try:  # the scheme only: the rest is the client's to read (several hosts, say)
        parsed = urlsplit(url)
    except ValueError:
        raise SettingsError(f"{name} is not a URL") from None
    if parsed.scheme not in schemes:
        raise SettingsError(f"{name} must start with {' or '.join(s + '://' for s in schemes)}")


def _default_algorithm(public_key: str) -> str:
    if not public_key:
        return "HS256"
    return "ES256" if "EC PUBLIC KEY" in public_key or _looks_like_ec(public_key) else "RS256"


def _looks_like_ec(pem: str) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        return isinstance(load_pem_public_key(pem.encode()), ec.EllipticCurvePublicKey)
    except ValueError as exc:
        raise SettingsError(f"COUPONSVC_JWT_PUBLIC_KEY is not a PEM public key: {exc}") from exc


def _seconds(value: str, name: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 3600:
        raise SettingsError(f"{name} must be a number of seconds above 0, got {value!r}")
    return seconds


def _switch(value: str, name: str) -> bool:
    """on/off, also spelled true/false, 1/0 or yes/no; anything else is refused."""
    if value.lower() in ("on", "true", "1", "yes"):
        return True
    if value.lower() in ("off", "false", "0", "no"):
        return False
    raise SettingsError(f"{name} must be on or off (or true/false), got {value!r}")


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {value!r}") from None
