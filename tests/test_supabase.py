"""SupabaseKeys: the project's JWKS over real HTTP, cached, refetched when old or on an unknown
kid (at most once per interval), old keys kept a while when the JWKS cannot be fetched."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import jwt
import pytest

from platica.supabase import (
    KEYS_MAX_AGE_SECONDS,
    KEYS_UNAVAILABLE,
    REFRESH_MIN_SECONDS,
    STALE_MAX_SECONDS,
    SupabaseKeys,
    TokenRefused,
    verify_user_token,
)
from tests.fake_supabase import FakeSupabase

USER = uuid.UUID("0b8c7f2e-5d1a-4c3b-9e6f-2a1d4b7c8e90")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def supabase() -> Iterator[FakeSupabase]:
    with FakeSupabase() as fake:
        yield fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(supabase: FakeSupabase, clock: Clock) -> SupabaseKeys:
    return SupabaseKeys(supabase.url, clock=clock)


async def verify(keys: SupabaseKeys, token: str) -> uuid.UUID:
    return await verify_user_token(token, keys=keys, secret=None)


class TestSupabaseKeys:
    async def test_cached_until_old(
        self, supabase: FakeSupabase, keys: SupabaseKeys, clock: Clock
    ) -> None:
        kid = supabase.add_key("ES256")
        assert await verify(keys, supabase.token(USER)) == USER
        clock.now += KEYS_MAX_AGE_SECONDS - 1
        assert await verify(keys, supabase.token(USER)) == USER
        assert supabase.fetches == 1

        supabase.revoke(kid)
        clock.now += 1  # the keys are now as old as Supabase allows: fetched again

        with pytest.raises(TokenRefused, match="unknown signing key"):
            await verify(keys, supabase.token(USER, kid=kid))
        assert supabase.fetches == 2

    async def test_unknown_kid_waits_for_the_interval(
        self, supabase: FakeSupabase, keys: SupabaseKeys, clock: Clock
    ) -> None:
        old = supabase.add_key("ES256")
        await verify(keys, supabase.token(USER, kid=old))
        new = supabase.add_key("RS256")

        with pytest.raises(TokenRefused, match="unknown signing key"):
            await verify(keys, supabase.token(USER, kid=new))  # fetched a moment ago
        clock.now += REFRESH_MIN_SECONDS

        assert await verify(keys, supabase.token(USER, kid=new)) == USER
        assert supabase.fetches == 2

    async def test_old_keys_serve_while_the_jwks_fails(
        self, supabase: FakeSupabase, keys: SupabaseKeys, clock: Clock
    ) -> None:
        supabase.add_key("ES256")
        await verify(keys, supabase.token(USER))
        supabase.fail_always("500")

        clock.now += KEYS_MAX_AGE_SECONDS
        assert await verify(keys, supabase.token(USER)) == USER
        clock.now += STALE_MAX_SECONDS - KEYS_MAX_AGE_SECONDS
        assert await verify(keys, supabase.token(USER)) == USER
        clock.now += 1

        with pytest.raises(TokenRefused) as refused:
            await verify(keys, supabase.token(USER))
        assert str(refused.value) == KEYS_UNAVAILABLE
        # Fetched, failed at 10 min, failed at an hour; then not again within the interval.
        assert supabase.fetches == 3

    async def test_unusable_keys_are_skipped(
        self, supabase: FakeSupabase, keys: SupabaseKeys
    ) -> None:
        """A symmetric (oct) key in a JWKS is never trusted, nor one for encryption."""
        secret = b"a-shared-secret-nobody-should-publish"
        encryption = supabase.add_key("RS256", publish=False)
        supabase.extra = [
            {"kty": "oct", "kid": "shared", "alg": "HS256", "k": b64(secret)},
            {**supabase.public_jwk(encryption), "use": "enc"},
            {"kty": "EC", "kid": "broken", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
            {"kty": "RSA", "alg": "RS256", "n": "AQAB", "e": "AQAB"},  # no kid
        ]
        signing = supabase.add_key("ES256")

        assert await verify(keys, supabase.token(USER, kid=signing)) == USER
        assert keys.cached(signing) is not None
        for kid in ("shared", encryption, "broken"):
            assert keys.cached(kid) is None
        forged = jwt.encode(
            supabase.claims(USER), secret, algorithm="HS256", headers={"kid": "shared"}
        )
        with pytest.raises(TokenRefused, match="HS256 tokens are accepted only with"):
            await verify(keys, forged)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TestRefresh:
    async def test_lists_the_usable_keys(self, supabase: FakeSupabase, keys: SupabaseKeys) -> None:
        assert await keys.refresh() == []  # a legacy project's JWKS: empty
        kid = supabase.add_key("ES256")
        assert await keys.refresh() == [kid]
        assert supabase.fetches == 2

    async def test_unreachable(self, clock: Clock) -> None:
        keys = SupabaseKeys("http://127.0.0.1:9", clock=clock)
        with pytest.raises(TokenRefused, match="keys unavailable"):
            await keys.refresh()
