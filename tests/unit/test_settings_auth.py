"""Settings.from_env, TokenVerifier and the scope rules of Principal."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from couponsvc import auth, errors
from couponsvc.auth import ADMIN, WRITE, Principal, TokenVerifier, issue_token
from couponsvc.ratelimit import storage_uri
from couponsvc.settings import DEV_SECRET, Settings, SettingsError

pytestmark = pytest.mark.unit

SECRET = "s" * 32
PROD = {"COUPONSVC_ENV": "prod", "COUPONSVC_DATABASE_URL": "postgresql://db/coupons",
        "COUPONSVC_JWT_SECRET": SECRET}


def pem(private_key) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def claims(**extra):
    now = int(time.time())
    return {"sub": "alice", "iat": now, "exp": now + 60, **extra}


def bearer(token: str) -> str:
    return f"Bearer {token}"


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


# --- settings ----------------------------------------------------------------


def test_dev_defaults():
    settings = Settings.from_env({"COUPONSVC_ENV": "dev"})

    assert settings.dev
    assert (settings.redis_url, settings.host, settings.port) == (
        "redis://127.0.0.1:6379/0", "127.0.0.1", 8000)
    assert (settings.key_prefix, settings.jwt_algorithm, settings.jwt_secret) == (
        "cb", "HS256", DEV_SECRET)
    assert (settings.jwt_audience, settings.jwt_issuer) == (None, None)
    assert settings.max_upload_codes == 1_000_000


def test_values_are_read_and_trimmed():
    settings = Settings.from_env({
        **PROD, "COUPONSVC_REDIS_URL": " redis://cache:6380/2 ", "COUPONSVC_PORT": "9000",
        "COUPONSVC_KEY_PREFIX": "shop", "COUPONSVC_JWT_AUDIENCE": "coupons",
        "COUPONSVC_JWT_ISSUER": "https://auth.example", "COUPONSVC_MAX_UPLOAD_CODES": "10",
    })

    assert not settings.dev
    assert (settings.redis_url, settings.port, settings.key_prefix) == (
        "redis://cache:6380/2", 9000, "shop")
    assert (settings.jwt_audience, settings.jwt_issuer) == ("coupons", "https://auth.example")
    assert settings.max_upload_codes == 10
    assert SECRET not in repr(settings)


@pytest.mark.parametrize("secret", [None, "", "   ", "x" * 31, DEV_SECRET])
def test_production_refuses_a_missing_short_or_default_secret(secret):
    env = {k: v for k, v in PROD.items() if k != "COUPONSVC_JWT_SECRET"}
    if secret is not None:
        env["COUPONSVC_JWT_SECRET"] = secret

    with pytest.raises(SettingsError, match="JWT_SECRET"):
        Settings.from_env(env)


def test_production_needs_a_database():
    env = {k: v for k, v in PROD.items() if k != "COUPONSVC_DATABASE_URL"}

    with pytest.raises(SettingsError, match="DATABASE_URL"):
        Settings.from_env(env)


def test_production_accepts_a_32_byte_secret():
    assert Settings.from_env(PROD).jwt_secret == SECRET


def test_dev_accepts_a_short_secret():
    assert Settings.from_env({"COUPONSVC_ENV": "dev", "COUPONSVC_JWT_SECRET": "short"}).dev


def test_environment_defaults_to_production():
    env = {k: v for k, v in PROD.items() if k != "COUPONSVC_ENV"}

    assert Settings.from_env(env).env == "prod"
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        Settings.from_env({"COUPONSVC_DATABASE_URL": "postgresql://db/coupons"})


@pytest.mark.parametrize("prefix", ["", "a{b", "a}b", "a:b", "a b"])
def test_bad_key_prefix(prefix):
    with pytest.raises(SettingsError, match="KEY_PREFIX"):
        Settings.from_env({"COUPONSVC_ENV": "dev", "COUPONSVC_KEY_PREFIX": prefix})


@pytest.mark.parametrize("name", ["PORT", "WORKERS", "MAX_UPLOAD_CODES", "MAX_BODY_BYTES",
                                  "IDEMPOTENCY_TTL_SECONDS"])
def test_integers_must_be_integers(name):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({"COUPONSVC_ENV": "dev", f"COUPONSVC_{name}": "many"})


def test_workers_default_to_one_and_must_be_positive():
    assert Settings.from_env({"COUPONSVC_ENV": "dev"}).workers == 1
    assert Settings.from_env({"COUPONSVC_ENV": "dev", "COUPONSVC_WORKERS": " 4 "}).workers == 4
    for bad in ("0", "-1"):
        with pytest.raises(SettingsError, match="COUPONSVC_WORKERS must be at least 1"):
            Settings.from_env({"COUPONSVC_ENV": "dev", "COUPONSVC_WORKERS": bad})


def test_the_port_must_be_one_a_socket_can_take():
    for bad in ("70000", "-1"):
        with pytest.raises(SettingsError, match="COUPONSVC_PORT must be from 0 to 65535"):
            Settings.from_env({"COUPONSVC_ENV": "dev", "COUPONSVC_PORT": bad})


@pytest.mark.parametrize(("name", "url", "says"), [
    ("REDIS_URL", "notaurl", "must start with redis:// or rediss:// or unix://"),
    ("REDIS_URL", "http://127.0.0.1:6379", "must start with redis://"),
    ("DATABASE_URL", "notaurl", "must start with postgres:// or postgresql://"),
    ("DATABASE_URL", "mysql://db/coupons", "must start with postgres://"),
    ("DATABASE_URL", "postgresql://[::1/coupons", "is not a URL"),
])
def test_a_malformed_address_is_a_settings_error(name, url, says):
    """Stopped at start-up: the writer retried a malformed one for ever."""
    with pytest.raises(SettingsError, match=f"COUPONSVC_{name} {says}"):
        Settings.from_env({"COUPONSVC_ENV": "dev", f"COUPONSVC_{name}": url})


@pytest.mark.parametrize("url", [
    "postgresql://u:p@h1:5432,h2:5432/db?target_session_attrs=read-write",  # failover pair
    "postgresql:///coupons?host=/run/postgresql",  # a unix socket
    "postgres://u@[::1]:5432/coupons?sslmode=require",
])
def test_database_urls_the_client_reads_are_accepted(url):
    assert Settings.from_env({"COUPONSVC_ENV": "dev", "COUPONSVC_DATABASE_URL": url}) \
        .database_url == url


def test_the_idempotency_window_defaults_to_a_day_and_is_bounded():
    assert Settings.from_env({"COUPONSVC_ENV": "dev"}).idempotency_ttl_seconds == 86400
    hour = {"COUPONSVC_ENV": "dev", "COUPONSVC_IDEMPOTENCY_TTL_SECONDS": "3600"}
    assert Settings.from_env(hour).idempotency_ttl_seconds == 3600
    for bad in ("299", "604801", "0"):
        with pytest.raises(SettingsError, match="COUPONSVC_IDEMPOTENCY_TTL_SECONDS must be"):
            Settings.from_env({"COUPONSVC_ENV": "dev", "COUPONSVC_IDEMPOTENCY_TTL_SECONDS": bad})


def test_rate_limits_default_on_and_can_be_switched_off():
    assert Settings.from_env(PROD).rate_limits is True
    settings = Settings.from_env({**PROD, "COUPONSVC_RATE_LIMITS": "off",
                                  "COUPONSVC_RATE_LIMIT_ASSIGN": "5/second;100/hour"})
    assert settings.rate_limits is False
    assert settings.rate_limit_assign == "5/second;100/hour"


@pytest.mark.parametrize(("name", "value"), [
    ("COUPONSVC_RATE_LIMITS", "sometimes"),
    ("COUPONSVC_RATE_LIMIT_ASSIGN", "lots"),
    ("COUPONSVC_RATE_LIMIT_MISSES", "10 per fortnight"),
    ("COUPONSVC_RATE_LIMIT_MISSES_ADDRESS", ""),
])
def test_bad_rate_limits_are_refused(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({**PROD, name: value})


def test_request_deadlines_are_read():
    settings = Settings.from_env({**PROD, "COUPONSVC_HEADER_TIMEOUT_SECONDS": "2.5",
                                  "COUPONSVC_BODY_TIMEOUT_SECONDS": "30",
                                  "COUPONSVC_KEEP_ALIVE_SECONDS": "7"})
    assert (settings.header_timeout_seconds, settings.body_timeout_seconds,
            settings.keep_alive_seconds) == (2.5, 30.0, 7)


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan", "86400"])
def test_request_deadlines_must_be_positive_seconds(value):
    with pytest.raises(SettingsError, match="COUPONSVC_BODY_TIMEOUT_SECONDS"):
        Settings.from_env({**PROD, "COUPONSVC_BODY_TIMEOUT_SECONDS": value})


@pytest.mark.parametrize(("url", "cluster", "uri"), [
    ("redis://127.0.0.1:6379/0", False, "async+redis://127.0.0.1:6379/0"),
    ("rediss://:pw@cache:6380/2", False, "async+rediss://:pw@cache:6380/2"),
    ("unix:///run/redis.sock", False, "async+redis+unix:///run/redis.sock"),
    ("redis://node-1:7000", True, "async+redis+cluster://node-1:7000"),
])
def test_the_limits_storage_uses_the_services_redis(url, cluster, uri):
    settings = Settings(redis_url=url, redis_cluster=cluster)
    assert storage_uri(settings) == uri


def test_public_keys_choose_their_algorithm(rsa_key, ec_key):
    for key, algorithm in ((rsa_key, "RS256"), (ec_key, "ES256")):
        settings = Settings.from_env({**PROD, "COUPONSVC_JWT_SECRET": "",
                                      "COUPONSVC_JWT_PUBLIC_KEY": pem(key)})
        assert settings.jwt_algorithm == algorithm
        token = jwt.encode(claims(), key, algorithm=algorithm)
        assert TokenVerifier(settings).verify(bearer(token)).sub == "alice"


@pytest.mark.parametrize("algorithm", ["HS256", "none", "PS512"])
def test_public_key_needs_an_asymmetric_algorithm(rsa_key, algorithm):
    with pytest.raises(SettingsError, match="ALGORITHM"):
        Settings.from_env({**PROD, "COUPONSVC_JWT_PUBLIC_KEY": pem(rsa_key),
                           "COUPONSVC_JWT_ALGORITHM": algorithm})


def test_asymmetric_algorithm_needs_a_public_key():
    with pytest.raises(SettingsError, match="PUBLIC_KEY"):
        Settings.from_env({**PROD, "COUPONSVC_JWT_ALGORITHM": "RS256"})


def test_public_key_must_be_pem():
    with pytest.raises(SettingsError, match="PUBLIC_KEY"):
        Settings.from_env({**PROD, "COUPONSVC_JWT_PUBLIC_KEY": "not a key"})


# --- tokens ------------------------------------------------------------------


@pytest.fixture
def hs_settings() -> Settings:
    return Settings(env="prod", jwt_secret=SECRET, database_url="postgresql://db/coupons")


def test_valid_token_gives_the_principal(hs_settings):
    token = jwt.encode(claims(scope=f"{WRITE} {ADMIN} other"), SECRET, algorithm="HS256")

    principal = TokenVerifier(hs_settings).verify(bearer(token))

    assert principal == Principal("alice", frozenset({WRITE, ADMIN, "other"}))


def test_token_without_scope_is_an_end_user(hs_settings):
    principal = TokenVerifier(hs_settings).verify(bearer(jwt.encode(claims(), SECRET)))

    assert principal.scopes == frozenset()
    assert not principal.acts_for_anyone


def test_scheme_is_case_insensitive(hs_settings):
    token = jwt.encode(claims(), SECRET)

    assert TokenVerifier(hs_settings).verify(f"bearer  {token} ").sub == "alice"


def segment(data) -> bytes:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")


def unsigned(payload) -> str:
    return (segment({"alg": "none", "typ": "JWT"}) + b"." + segment(payload) + b".").decode()


def hs256_with(key: bytes, payload) -> str:
    """An HS256 token signed with any bytes (PyJWT refuses PEM keys as HMAC secrets)."""
    signing_input = segment({"alg": "HS256", "typ": "JWT"}) + b"." + segment(payload)
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


def without(name: str) -> dict:
    return {k: v for k, v in claims().items() if k != name}


# Built when the test runs, so no token expires between collection and use.
BAD_HEADERS = {
    "missing": lambda: None,
    "empty": lambda: "",
    "scheme-only": lambda: "Bearer",
    "scheme-blank": lambda: "Bearer   ",
    "basic": lambda: f"Basic {base64.b64encode(b'alice:pw').decode()}",
    "other-scheme": lambda: f"Token {jwt.encode(claims(), SECRET)}",
    "garbage": lambda: bearer("not.a.jwt"),
    "alg-none": lambda: bearer(unsigned(claims(scope=ADMIN))),
    "wrong-key": lambda: bearer(jwt.encode(claims(), "w" * 32)),
    "wrong-alg": lambda: bearer(jwt.encode(claims(), SECRET * 2, algorithm="HS512")),
    "expired": lambda: bearer(jwt.encode(claims(exp=int(time.time()) - 10), SECRET)),
    "no-sub": lambda: bearer(jwt.encode(without("sub"), SECRET)),
    "no-exp": lambda: bearer(jwt.encode(without("exp"), SECRET)),
    "empty-sub": lambda: bearer(jwt.encode(claims(sub=""), SECRET)),
    "number-sub": lambda: bearer(jwt.encode(claims(sub=42), SECRET)),
    "scope-list": lambda: bearer(jwt.encode(claims(scope=[ADMIN]), SECRET)),
    "bad-signature": lambda: bearer(jwt.encode(claims(), SECRET)[:-4] + "AAAA"),
    # Signed, but a lone surrogate cannot be written as UTF-8 (a Redis key).
    "lone-surrogate-sub": lambda: bearer(hs256_with(SECRET.encode(), claims(sub="al\ud800"))),
    "lone-surrogate-scope": lambda: bearer(hs256_with(SECRET.encode(),
                                                      claims(scope=f"{ADMIN}\udfff"))),
    # Past any float: float(exp) raised OverflowError (a 500).
    "exp-beyond-floats": lambda: bearer(hs256_with(SECRET.encode(), claims(exp=10**400))),
}


@pytest.mark.parametrize("make_header", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_bad_tokens_are_unauthorized(hs_settings, make_header):
    with pytest.raises(errors.Unauthorized) as caught:
        TokenVerifier(hs_settings).verify(make_header())

    assert caught.value.status == 401
    assert caught.value.headers()["WWW-Authenticate"].startswith("Bearer")


def test_an_exp_sent_as_a_numeric_string_is_read_as_pyjwt_reads_it(hs_settings):
    """pyjwt accepts "exp": "1795565530" (it checks int(exp)): so does the cache."""
    exp = int(time.time()) + 60
    token = hs256_with(SECRET.encode(), claims(exp=str(exp)))

    assert TokenVerifier(hs_settings).verify(bearer(token)).sub == "alice"


def test_scopes_are_separated_by_spaces_only(hs_settings):
    """RFC 8693: a space, not any Unicode white space, separates scopes."""
    token = jwt.encode(claims(scope=f"{ADMIN}\u3000{WRITE}\t{WRITE}"), SECRET)

    principal = TokenVerifier(hs_settings).verify(bearer(token))

    assert principal.scopes == frozenset({f"{ADMIN}\u3000{WRITE}\t{WRITE}"})
    assert not principal.acts_for_anyone


def test_one_token_is_cached_once_however_it_is_spelled(hs_settings):
    """The cache is keyed on the token, not the header: the scheme's case and
    padding made one token thousands of entries, enough to push out everyone
    else's."""
    verifier = TokenVerifier(hs_settings)
    token = jwt.encode(claims(), SECRET)

    spellings = [f"Bearer{' ' * n}{token}" for n in (1, 2, 5000)] + [f"bEaReR {token}  "]
    for header in spellings:
        assert verifier.verify(header).sub == "alice"

    assert list(verifier._cache) == [token]


def test_a_full_token_cache_forgets_its_oldest_entry_only(hs_settings, monkeypatch):
    monkeypatch.setattr(auth, "TOKEN_CACHE_LIMIT", 2)
    verifier = TokenVerifier(hs_settings)
    tokens = [jwt.encode(claims(sub=f"user-{n}"), SECRET) for n in range(3)]

    for token in tokens:
        verifier.verify(bearer(token))

    assert list(verifier._cache) == tokens[1:]


def test_audience_and_issuer_when_configured():
    settings = Settings(env="dev", jwt_secret=SECRET, jwt_audience="coupons",
                        jwt_issuer="https://auth.example")
    verifier = TokenVerifier(settings)
    good = {"aud": "coupons", "iss": "https://auth.example"}

    assert verifier.verify(bearer(jwt.encode(claims(**good), SECRET))).sub == "alice"
    for wrong in ({"aud": "other"}, {"iss": "https://evil.example"}, {"aud": None},
                  {"iss": None}):
        payload = {k: v for k, v in {**claims(**good), **wrong}.items() if v is not None}
        with pytest.raises(errors.Unauthorized):
            verifier.verify(bearer(jwt.encode(payload, SECRET)))


def test_rs256_tokens_with_a_public_key(rsa_key):
    settings = Settings(env="prod", database_url="postgresql://db/coupons",
                        jwt_public_key=pem(rsa_key), jwt_algorithm="RS256")
    verifier = TokenVerifier(settings)

    token = jwt.encode(claims(scope=WRITE), rsa_key, algorithm="RS256")
    assert verifier.verify(bearer(token)) == Principal("alice", frozenset({WRITE}))

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(errors.Unauthorized):
        verifier.verify(bearer(jwt.encode(claims(), other_key, algorithm="RS256")))
    # Algorithm confusion: an HS256 token keyed with the public key itself.
    with pytest.raises(errors.Unauthorized):
        verifier.verify(bearer(hs256_with(pem(rsa_key).encode(), claims(scope=ADMIN))))
    with pytest.raises(errors.Unauthorized):
        verifier.verify(bearer(jwt.encode(claims(), SECRET, algorithm="HS256")))


def test_es256_tokens_with_a_public_key(ec_key):
    settings = Settings(env="dev", jwt_public_key=pem(ec_key), jwt_algorithm="ES256")

    token = jwt.encode(claims(), ec_key, algorithm="ES256")
    assert TokenVerifier(settings).verify(bearer(token)).sub == "alice"


def test_issued_tokens_verify(hs_settings):
    token = issue_token(hs_settings, "svc", scope=WRITE, ttl_seconds=60)

    assert TokenVerifier(hs_settings).verify(bearer(token)) == Principal("svc", frozenset({WRITE}))


def test_tokens_cannot_be_issued_with_a_public_key(ec_key):
    with pytest.raises(ValueError):
        issue_token(Settings(env="dev", jwt_public_key=pem(ec_key), jwt_algorithm="ES256"), "x")


# --- scopes ------------------------------------------------------------------


def test_admin_scope_is_required_for_admin_operations():
    Principal("root", frozenset({ADMIN})).require_admin()
    for scopes in (frozenset(), frozenset({WRITE}), frozenset({"coupons:admin2"})):
        with pytest.raises(errors.Forbidden):
            Principal("x", scopes).require_admin()


def test_end_users_act_only_for_themselves():
    alice = Principal("alice", frozenset())
    alice.require_user("alice")
    with pytest.raises(errors.Forbidden):
        alice.require_user("bob")
    for scope in (WRITE, ADMIN):
        Principal("svc", frozenset({scope})).require_user("bob")


def test_a_remembered_token_still_expires(hs_settings):
    verifier = TokenVerifier(hs_settings)
    exp = int(time.time()) + 1
    header = bearer(jwt.encode(claims(exp=exp), SECRET))
    assert verifier.verify(header).sub == "alice"
    assert verifier.verify(header).sub == "alice"  # answered from the cache

    time.sleep(max(0.0, exp - time.time()) + 0.05)

    with pytest.raises(errors.Unauthorized, match="expired"):
        verifier.verify(header)


def test_a_refused_token_stays_refused(hs_settings):
    verifier = TokenVerifier(hs_settings)
    header = bearer(jwt.encode(claims(), "w" * 32))

    for _ in range(2):
        with pytest.raises(errors.Unauthorized):
            verifier.verify(header)


@pytest.mark.parametrize("environment", ["production", "staging", "PROD", "development"])
def test_an_unknown_environment_is_refused(environment):
    """A typo must not silently start a service that keeps no durable record."""
    with pytest.raises(SettingsError, match="COUPONSVC_ENV must be one of prod, test, dev"):
        Settings.from_env({**PROD, "COUPONSVC_ENV": environment})


def test_test_environment_needs_a_strong_secret_but_no_database():
    settings = Settings.from_env({"COUPONSVC_ENV": "test", "COUPONSVC_JWT_SECRET": SECRET})
    assert (settings.env, settings.database_url) == ("test", "")
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        Settings.from_env({"COUPONSVC_ENV": "test", "COUPONSVC_JWT_SECRET": "short"})


@pytest.mark.parametrize(("value", "cluster"), [
    ("true", True), ("on", True), ("1", True), ("YES", True),
    ("false", False), ("off", False), ("0", False), ("", False)])
def test_redis_cluster_is_an_on_off_switch(value, cluster):
    assert Settings.from_env({**PROD, "COUPONSVC_REDIS_CLUSTER": value}).redis_cluster is cluster


@pytest.mark.parametrize("value", ["cluster", "enabled", "2"])
def test_redis_cluster_refuses_other_values(value):
    with pytest.raises(SettingsError, match="COUPONSVC_REDIS_CLUSTER must be on or off"):
        Settings.from_env({**PROD, "COUPONSVC_REDIS_CLUSTER": value})


def test_commands_that_verify_no_tokens_need_no_secret():
    env = {k: v for k, v in PROD.items() if k != "COUPONSVC_JWT_SECRET"}

    settings = Settings.from_env(env, uses_jwt_key=False)

    assert (settings.env, settings.jwt_secret) == ("prod", "")
    with pytest.raises(SettingsError, match="DATABASE_URL"):  # the rest is still checked
        Settings.from_env({"COUPONSVC_ENV": "prod"}, uses_jwt_key=False)
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        Settings.from_env(env)
