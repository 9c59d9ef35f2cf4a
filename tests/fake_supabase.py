"""A protocol-faithful fake of a Supabase project's auth keys: the JWKS document at
``/auth/v1/.well-known/jwks.json`` over real HTTP, and the tokens its keys sign.

Supabase publishes each asymmetric signing key with its ``kid``, ``alg`` (ES256 or RS256), ``kty``
and ``use: sig``; a project that only has the legacy HS256 secret publishes ``{"keys": []}``. The
user tokens it issues carry ``iss`` ``<project>/auth/v1``, ``aud`` ``authenticated``, ``sub`` (the
user's UUID), ``role``, ``iat`` and ``exp``, and a header naming the ``kid``.

In a test::

    with FakeSupabase() as supabase:
        kid = supabase.add_key("ES256")
        token = supabase.token(user_id)          # signed by the newest key
        ...  # point SUPABASE_URL at supabase.url
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes import _FakeServer

JWKS_PATH = "/auth/v1/.well-known/jwks.json"


class FakeSupabase(_FakeServer):
    """Serves the JWKS of its keys; ``fetches`` counts the requests for it."""

    BEHAVIOURS = frozenset({"500"})

    def __init__(self, *, port: int | None = None) -> None:
        self._private: dict[str, tuple[str, Any]] = {}  # kid -> (alg, private key)
        self._published: list[str] = []
        self.fetches = 0
        # Raw JWKs served after the keys (to see what the client makes of odd ones).
        self.extra: list[dict[str, Any]] = []
        super().__init__(port=port, latency=0.0, hang_seconds=0.0)

    @property
    def url(self) -> str:
        """The project URL (SUPABASE_URL)."""
        return self.base_url

    @property
    def issuer(self) -> str:
        return f"{self.url}/auth/v1"

    # -- keys ------------------------------------------------------------------------------------

    def add_key(self, algorithm: str, *, publish: bool = True) -> str:
        """A new signing key (ES256 on P-256, or RS256 on 2048 bits); its kid."""
        if algorithm == "ES256":
            private: Any = ec.generate_private_key(ec.SECP256R1())
        elif algorithm == "RS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ValueError(f"Supabase signs with ES256 or RS256, not {algorithm}")
        kid = str(uuid.uuid4())
        with self._lock:
            self._private[kid] = (algorithm, private)
            if publish:
                self._published.append(kid)
        return kid

    @property
    def published(self) -> list[str]:
        """The kids the JWKS lists, oldest first."""
        with self._lock:
            return list(self._published)

    def publish(self, kid: str) -> None:
        with self._lock:
            self._published.append(kid)

    def revoke(self, kid: str) -> None:
        """Take a key out of the JWKS (its tokens are no longer valid)."""
        with self._lock:
            self._published.remove(kid)

    def public_jwk(self, kid: str) -> dict[str, Any]:
        algorithm, private = self._private[kid]
        algo = jwt.get_algorithm_by_name(algorithm)
        jwk: dict[str, Any] = json.loads(algo.to_jwk(private.public_key()))
        return {**jwk, "kid": kid, "alg": algorithm, "use": "sig", "key_ops": ["verify"]}

    def public_pem(self, kid: str) -> bytes:
        from cryptography.hazmat.primitives import serialization

        _algorithm, private = self._private[kid]
        pem: bytes = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem

    # -- tokens ----------------------------------------------------------------------------------

    def claims(
        self,
        user_id: uuid.UUID | str,
        *,
        expires_in: timedelta = timedelta(hours=1),
        audience: str = "authenticated",
        **extra: Any,
    ) -> dict[str, Any]:
        now = datetime.now(UTC)
        return {
            "iss": self.issuer,
            "sub": str(user_id),
            "aud": audience,
            "role": "authenticated",
            "aal": "aal1",
            "session_id": str(uuid.uuid4()),
            "iat": int(now.timestamp()) - 5,
            "exp": int((now + expires_in).timestamp()),
            **extra,
        }

    def token(self, user_id: uuid.UUID | str, *, kid: str | None = None, **claims: Any) -> str:
        """A user's access token, signed by `kid` (default: the newest key)."""
        kid = kid or list(self._private)[-1]
        algorithm, private = self._private[kid]
        return jwt.encode(
            self.claims(user_id, **claims),
            private,
            algorithm=algorithm,
            headers={"kid": kid, "typ": "JWT"},
        )

    # -- the fake server -------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        return [Route(JWKS_PATH, self._jwks, methods=["GET"])]

    async def _jwks(self, request: Request) -> Response:
        with self._lock:
            self.fetches += 1
            published = list(self._published)
        if self._next_behaviour() == "500":
            return JSONResponse({"message": "An unexpected error occurred"}, status_code=500)
        keys = [self.public_jwk(kid) for kid in published] + self.extra
        # What Supabase sends: cached at its edge for 10 minutes.
        return JSONResponse({"keys": keys}, headers={"Cache-Control": "public, max-age=600"})

    def _state(self) -> dict[str, Any]:
        return {"fetches": self.fetches, "published": list(self._published)}

    def _clear_records(self) -> None:
        self.fetches = 0

    async def _not_found(self, request: Request) -> Response:
        return JSONResponse({"message": "no Route matched with those values"}, status_code=404)
