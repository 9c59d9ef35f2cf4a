"""Supabase users' JWTs: verified with the project's signing keys (JWKS) or its legacy secret.

Two ways a Supabase project signs its users' tokens (docs/supabase.md):

- asymmetric keys (ES256, recommended, or RS256), published at
  `<SUPABASE_URL>/auth/v1/.well-known/jwks.json`. `SupabaseKeys` fetches that document over
  HTTP, keeps it at most KEYS_MAX_AGE_SECONDS (what Supabase asks clients not to exceed), and
  fetches it again when a token names a `kid` it does not hold (a key rotated in), but never more
  than once every REFRESH_MIN_SECONDS, so that forged `kid`s cannot make Plática hammer the
  project. The key, not the token's header, decides the algorithm: a key is used only with its
  own `alg` (or the one its `kty`/`crv` implies), and symmetric keys in a JWKS are ignored.
- the legacy shared secret (`SUPABASE_JWT_SECRET`), for HS256 only. An HS256 token whose `kid`
  is one of the JWKS's keys is refused outright: that is the HS/RS confusion attack, an HMAC
  made with a public key as its secret.

Either way the audience must be `authenticated`, `exp` and `sub` (the user's UUID) are required,
with LEEWAY_SECONDS for clocks. Tokens verified with the JWKS must also come from the project:
`iss` is `<SUPABASE_URL>/auth/v1`. Every refusal is a `TokenRefused` whose message says why.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt

from platica.logging import get_logger

log = get_logger(__name__)

JWKS_PATH = "/auth/v1/.well-known/jwks.json"
AUDIENCE = "authenticated"
LEEWAY_SECONDS = 10
# Supabase's edge and client libraries each cache the JWKS for 10 minutes; it asks for no more.
KEYS_MAX_AGE_SECONDS = 600.0
# An unknown `kid` fetches the JWKS again, at most this often.
REFRESH_MIN_SECONDS = 10.0
# While the JWKS cannot be fetched, the keys fetched last still verify tokens this long.
STALE_MAX_SECONDS = 3600.0
FETCH_TIMEOUT_SECONDS = 5.0
# What Supabase signs with (EdDSA is announced, not offered yet).
ASYMMETRIC_ALGORITHMS = frozenset({"ES256", "RS256"})
LEGACY_ALGORITHM = "HS256"
KEYS_UNAVAILABLE = "could not verify token: keys unavailable"


class TokenRefused(Exception):
    """A user's JWT is not accepted; the message says why (the 401's text)."""


class KeysUnavailable(TokenRefused):
    """The project's signing keys could not be fetched, so the token could not be checked."""

    def __init__(self) -> None:
        super().__init__(KEYS_UNAVAILABLE)


class SupabaseKeys:
    """The project's signing keys by `kid`, fetched from its JWKS and cached (module docstring).

    One per process (on AppState); `clock` is monotonic seconds.
    """

    def __init__(self, supabase_url: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = supabase_url.rstrip("/") + JWKS_PATH
        self.issuer = supabase_url.rstrip("/") + "/auth/v1"
        self.clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # the last fetch that succeeded
        self._tried_at: float | None = None  # the last attempt, successful or not
        self._available = False  # whether the last attempt succeeded
        self._lock = asyncio.Lock()
        self.fetches = 0  # attempts so far (for logs and tests)

    def cached(self, kid: str) -> jwt.PyJWK | None:
        """The key `kid` if already held; never fetches."""
        return self._keys.get(kid)

    async def key(self, kid: str) -> jwt.PyJWK:
        """The signing key `kid`, fetching the JWKS when it is old or lacks that key."""
        if self._needs_fetch(kid):
            async with self._lock:
                if self._needs_fetch(kid):  # another request may have fetched meanwhile
                    await self._fetch()
        key = self._keys.get(kid)
        age = None if self._fetched_at is None else self.clock() - self._fetched_at
        if age is None or age > STALE_MAX_SECONDS:
            raise KeysUnavailable
        if key is None:
            if not self._available:
                raise KeysUnavailable
            raise TokenRefused(f"unknown signing key {kid!r}: not in the project's JWKS")
        return key

    async def refresh(self) -> list[str]:
        """Fetch the JWKS now, whatever the cache holds (for checks such as `platica doctor`):
        the kids of the keys Plática can use (none: a legacy project, HS256 only)."""
        async with self._lock:
            await self._fetch()
        if not self._available:
            raise KeysUnavailable
        return sorted(self._keys)

    def _needs_fetch(self, kid: str) -> bool:
        now = self.clock()
        if self._tried_at is not None and now - self._tried_at < REFRESH_MIN_SECONDS:
            return False
        if self._fetched_at is None or now - self._fetched_at >= KEYS_MAX_AGE_SECONDS:
            return True
        return kid not in self._keys

    async def _fetch(self) -> None:
        self._tried_at = self.clock()
        self.fetches += 1
        try:
            async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS) as client:
                response = await client.get(self.url, headers={"Accept": "application/json"})
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            document = response.json()
        except (httpx.HTTPError, ValueError) as error:
            self._available = False
            reason = str(error) or type(error).__name__
            log.warning("supabase.jwks_unavailable", url=self.url, error=reason)
            return
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            self._available = False
            log.warning("supabase.jwks_malformed", url=self.url)
            return
        self._keys = _usable_keys(document["keys"])
        self._fetched_at = self._tried_at
        self._available = True
        log.info("supabase.jwks_fetched", url=self.url, kids=sorted(self._keys))


def _usable_keys(entries: list[Any]) -> dict[str, jwt.PyJWK]:
    """The JWKS's signing keys Plática accepts, by `kid`; the rest skipped (logged)."""
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            log.info("supabase.jwks_key_skipped", reason="no kid")
            continue
        kid = entry["kid"]
        if entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        # PyJWKError, InvalidKeyError: an unknown or broken key; the rest: malformed members.
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as error:
            log.info("supabase.jwks_key_skipped", kid=kid, reason=str(error))
            continue
        if key.algorithm_name not in ASYMMETRIC_ALGORITHMS:
            log.info("supabase.jwks_key_skipped", kid=kid, reason=key.algorithm_name)
            continue
        keys[kid] = key
    return keys


async def verify_user_token(
    token: str, *, keys: SupabaseKeys | None, secret: str | None
) -> uuid.UUID:
    """The Supabase user (`sub`) of a valid token; TokenRefused saying why otherwise."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenRefused("malformed token") from None
    algorithm = header.get("alg")
    kid = header.get("kid")
    if not isinstance(algorithm, str) or algorithm.lower() == "none":
        raise TokenRefused("unsigned tokens (alg none) are refused")
    if kid is not None and not isinstance(kid, str):
        raise TokenRefused("malformed token: kid is not a string")
    if algorithm.upper().startswith("HS"):
        claims = _verify_legacy(token, algorithm, kid, keys, secret)
    else:
        claims = await _verify_asymmetric(token, algorithm, kid, keys)
    try:
        return uuid.UUID(str(claims["sub"]))
    except ValueError:
        raise TokenRefused("token subject (sub) is not a Supabase user id") from None


def _verify_legacy(
    token: str, algorithm: str, kid: str | None, keys: SupabaseKeys | None, secret: str | None
) -> dict[str, Any]:
    if kid is not None and keys is not None and (key := keys.cached(kid)) is not None:
        # An HMAC made with a published public key as its secret (HS/RS confusion).
        raise TokenRefused(
            f"token algorithm {algorithm} does not match its key {kid!r} ({key.algorithm_name})"
        )
    if algorithm != LEGACY_ALGORITHM:
        raise TokenRefused(f"token algorithm {algorithm} is not accepted (ES256, RS256, HS256)")
    if secret is None:
        raise TokenRefused(
            "HS256 tokens are accepted only with SUPABASE_JWT_SECRET set; "
            "this deployment verifies tokens with the project's signing keys (SUPABASE_URL)"
        )
    return _decode(token, secret, LEGACY_ALGORITHM, issuer=None)


async def _verify_asymmetric(
    token: str, algorithm: str, kid: str | None, keys: SupabaseKeys | None
) -> dict[str, Any]:
    if keys is None:
        raise TokenRefused(
            f"{algorithm} tokens are accepted only with SUPABASE_URL set (the project's "
            "signing keys); this deployment has only SUPABASE_JWT_SECRET (HS256)"
        )
    if kid is None:
        raise TokenRefused("token has no kid: cannot tell which signing key made it")
    key = await keys.key(kid)
    if algorithm != key.algorithm_name:
        raise TokenRefused(
            f"token algorithm {algorithm} does not match its key {kid!r} ({key.algorithm_name})"
        )
    return _decode(token, key.key, key.algorithm_name, issuer=keys.issuer)


def _decode(token: str, key: Any, algorithm: str, *, issuer: str | None) -> dict[str, Any]:
    """The claims, checked: signature with `algorithm` only, audience, expiry, issuer."""
    required = ["sub", "exp", "aud"] + (["iss"] if issuer else [])
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=AUDIENCE,
            issuer=issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": required},
        )
    except jwt.ExpiredSignatureError:
        raise TokenRefused("token expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenRefused("token not valid yet (nbf/iat in the future: check the clock)") from None
    except jwt.MissingRequiredClaimError as error:
        raise TokenRefused(f"token lacks the {error.claim!r} claim") from None
    except jwt.InvalidAudienceError:
        raise TokenRefused(f"token is not for audience {AUDIENCE!r}") from None
    except jwt.InvalidIssuerError:
        raise TokenRefused(f"token issuer is not this project (expected {issuer!r})") from None
    except jwt.InvalidSignatureError:
        raise TokenRefused("invalid token signature") from None
    except jwt.DecodeError:
        raise TokenRefused("malformed token") from None
    except jwt.PyJWTError as error:
        raise TokenRefused(f"invalid token: {error}") from None
    return claims
