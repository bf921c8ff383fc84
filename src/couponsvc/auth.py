"""Bearer-token authentication and the scope rules.

Scopes (space-separated `scope` claim):
  coupons:admin  create books, upload or generate codes, read anything
  coupons:write  a checkout back-end: assign, lock, unlock, redeem and list for any user
  (neither)      an end user: the same, but only for `userId == sub`
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from couponsvc.errors import Forbidden, Unauthorized
from couponsvc.settings import Settings

TOKEN_CACHE_LIMIT = 10_000
# Only tokens this short are cached (they are a few hundred bytes), so the
# cache stays under TOKEN_CACHE_LIMIT x this whatever clients send.
CACHED_TOKEN_LIMIT = 4096
# An exp past this (the year 5138) is refused: it is no real expiry, and
# much larger integers do not even convert to a float.
LATEST_EXP = 10**11
ADMIN = "coupons:admin"
WRITE = "coupons:write"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the token says."""

    sub: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes

    @property
    def acts_for_anyone(self) -> bool:
        """A back-end (or admin) may act for any user; an end user only for itself."""
        return self.is_admin or WRITE in self.scopes

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden(f"this operation needs the {ADMIN} scope")

    def require_user(self, user_id: str) -> None:
        if not self.acts_for_anyone and user_id != self.sub:
            raise Forbidden(f"a token without {WRITE} may act only for its own subject")


class TokenVerifier:
    """Verifies bearer tokens with the one algorithm the deployment configured."""

    def __init__(self, settings: Settings) -> None:
        self._key = settings.jwt_public_key or settings.jwt_secret
        self._algorithms = [settings.jwt_algorithm]
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        required = ["exp", "sub"] + (["aud"] if self._audience else []) \
            + (["iss"] if self._issuer else [])
        self._options: jwt.types.Options = {"require": required}
        self._cache: dict[str, tuple[Principal, float]] = {}

    def verify(self, authorization: str | None) -> Principal:
        # A token verified once stays valid until its exp: checkout back-ends
        # send the same token on every request, so skip the signature check.
        # Cached by the token itself, not the header: one token spelled many
        # ways (the scheme's case, spaces) would otherwise push out the others.
        token = _bearer_token(authorization)
        cached = self._cache.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        principal, expires = self._verify(token)
        if len(token) <= CACHED_TOKEN_LIMIT:
            if len(self._cache) >= TOKEN_CACHE_LIMIT:
                self._cache.pop(next(iter(self._cache)))  # the oldest entry
            self._cache[token] = (principal, expires)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options=self._options,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        # pyjwt took int(exp) (a numeric string too) when it checked the expiry.
        sub, scope, exp = claims.get("sub"), claims.get("scope", ""), int(claims["exp"])
        if not isinstance(sub, str) or not sub or not is_unicode(sub):
            raise Unauthorized("the token's sub claim must be a non-empty string")
        if not isinstance(scope, str) or not is_unicode(scope):
            raise Unauthorized("the token's scope claim must be a space-separated string")
        if exp > LATEST_EXP:
            raise Unauthorized("the token's exp claim is too far in the future")
        # Space-separated (RFC 8693), not split on any Unicode white space.
        scopes = frozenset(name for name in scope.split(" ") if name)
        return Principal(sub=sub, scopes=scopes), float(exp)


def _bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header."""
    if not authorization:
        raise Unauthorized("send Authorization: Bearer <token>", credentials_sent=False)
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        # Another scheme, or no token: no bearer credentials were sent.
        raise Unauthorized("the Authorization header must be 'Bearer <token>'",
                           credentials_sent=False)
    return token


def is_unicode(text: str) -> bool:
    """False for a string with a lone surrogate (JSON's "\\ud800" decodes to
    one): it cannot be written as UTF-8, so not into a Redis key either."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def issue_token(settings: Settings, sub: str, scope: str = "", ttl_seconds: int = 3600) -> str:
    """A signed HS256 token for local use and demos (`couponsvc token`)."""
    if settings.jwt_public_key:
        raise ValueError("tokens can only be issued with a shared secret (HS256)")
    now = int(time.time())
    claims: dict[str, object] = {"sub": sub, "iat": now, "exp": now + ttl_seconds}
    if scope:
        claims["scope"] = scope
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")
