"""JWTs for the integration tests: the scopes and claims the API checks, HS256
tokens signed with any key (or forged without `sub` or `exp`), an unsigned
`alg: none` token, and the Authorization header that carries one."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt

ADMIN = "coupons:admin"
WRITE = "coupons:write"
AUDIENCE = "coupon-service"
ISSUER = "https://issuer.test/"


def make_token(key: str, sub: str | None, scope: str | list[str] | None = None, *,
               ttl: int | None = 3600, aud: str | list[str] | None = None,
               iss: str | None = None, **claims: Any) -> str:
    """An HS256 JWT; leave out `sub` (None) or `exp` (ttl=None) to forge bad ones."""
    payload: dict[str, Any] = {"iat": int(time.time())}
    optional = {"sub": sub, "exp": None if ttl is None else int(time.time()) + ttl,
                "scope": scope, "aud": aud, "iss": iss}
    payload.update({name: value for name, value in optional.items() if value is not None})
    payload.update(claims)
    return jwt.encode(payload, key, algorithm="HS256")


def unsigned_token(sub: str, scope: str = f"{ADMIN} {WRITE}") -> str:
    """A token with `alg: none` and an empty signature."""

    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = {"sub": sub, "scope": scope, "exp": int(time.time()) + 3600}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
