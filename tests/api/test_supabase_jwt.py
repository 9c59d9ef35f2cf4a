"""Supabase users' JWTs through the real API: verified with the project's JWKS (ES256, RS256,
served over HTTP by the fake, rotated) or the legacy HS256 secret; every bad token a 401 saying
why."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import pytest

from platica.deps import AppState
from platica.supabase import REFRESH_MIN_SECONDS
from tests.api.conftest import JWT_SECRET, Api, Tenant, supabase_token
from tests.conftest import LiveServer, sqlite_only
from tests.fake_supabase import FakeSupabase
from tests.records import default_account_key
from tests.stack import live_stack

Start = Callable[..., Api]


@pytest.fixture
def supabase() -> Iterator[FakeSupabase]:
    with FakeSupabase() as fake:
        yield fake


@pytest.fixture
def start(
    database_url: str, live_server: Callable[..., LiveServer], supabase: FakeSupabase
) -> Iterator[Start]:
    """Plática on a live server with `overrides` (default: SUPABASE_URL = the fake project)."""
    with ExitStack() as stacks:

        def begin(**overrides: Any) -> Api:
            overrides = {"SUPABASE_URL": supabase.url, **overrides}
            overrides = {name: value for name, value in overrides.items() if value is not None}
            stack = stacks.enter_context(live_stack(database_url, live_server, **overrides))
            account_id, key = default_account_key(database_url)
            tenant = Tenant(account_id, key, "", "")
            parts = (stack.server, stack.openai, stack.twilio, stack.database, stack.client)
            return Api(*parts, database_url, tenant)

        yield begin


def refused(response: Any) -> str:
    """The message of a 401."""
    assert response.status_code == 401, (response.status_code, response.text)
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["code"] == "unauthorized"
    message: str = error["message"]
    return message


def later(api: Api, seconds: float) -> None:
    """Move the server's JWKS clock `seconds` on (the refetch interval is in real time)."""
    state: AppState = api.server.app.state.platica
    keys = state.supabase_keys
    assert keys is not None
    keys.clock = lambda: time.monotonic() + seconds


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand (PyJWT refuses to make these): HS256 with `key`, or unsigned."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


class TestSigningKeys:
    def test_es256_token_is_accepted(self, start: Start, supabase: FakeSupabase) -> None:
        supabase.add_key("ES256")
        api = start()
        user = api.link_supabase_user(api.a.id)
        token = supabase.token(user)

        assert api.ok(api.get("/api/sms/stats", token=token))["channel"] == "sms"
        assert api.ok(api.get("/api/whatsapp/stats", token=token))["channel"] == "whatsapp"
        assert supabase.fetches == 1  # cached

    @sqlite_only
    def test_rs256_token_is_accepted(self, start: Start, supabase: FakeSupabase) -> None:
        supabase.add_key("RS256")
        api = start()
        user = api.link_supabase_user(api.a.id)

        assert api.ok(api.get("/api/sms/stats", token=supabase.token(user)))["channel"] == "sms"

    @sqlite_only
    def test_a_rotated_in_key_is_fetched(self, start: Start, supabase: FakeSupabase) -> None:
        old = supabase.add_key("ES256")
        api = start()
        user = api.link_supabase_user(api.a.id)
        api.ok(api.get("/api/sms/stats", token=supabase.token(user, kid=old)))
        assert supabase.fetches == 1

        new = supabase.add_key("RS256")  # appears in the JWKS after Plática fetched it
        later(api, REFRESH_MIN_SECONDS + 1)

        api.ok(api.get("/api/sms/stats", token=supabase.token(user, kid=new)))
        assert supabase.fetches == 2
        api.ok(api.get("/api/sms/stats", token=supabase.token(user, kid=old)))
        api.ok(api.get("/api/sms/stats", token=supabase.token(user, kid=new)))
        assert supabase.fetches == 2

    @sqlite_only
    def test_unknown_kid_refetches_at_most_once_per_interval(
        self, start: Start, supabase: FakeSupabase
    ) -> None:
        published = supabase.add_key("ES256")
        stray = supabase.add_key("ES256", publish=False)
        api = start()
        user = api.link_supabase_user(api.a.id)
        api.ok(api.get("/api/sms/stats", token=supabase.token(user, kid=published)))
        later(api, REFRESH_MIN_SECONDS + 1)

        first = refused(api.get("/api/sms/stats", token=supabase.token(user, kid=stray)))
        again = refused(api.get("/api/sms/stats", token=supabase.token(user, kid=stray)))

        assert first == again == f"unknown signing key {stray!r}: not in the project's JWKS"
        assert supabase.fetches == 2  # one refetch for both

    @sqlite_only
    def test_unreachable_jwks_is_refused(self, start: Start, supabase: FakeSupabase) -> None:
        supabase.add_key("ES256")
        # Nothing listens on the discard port.
        api = start(SUPABASE_URL="http://127.0.0.1:9")
        user = api.link_supabase_user(api.a.id)

        message = refused(api.get("/api/sms/stats", token=supabase.token(user)))

        assert message == "could not verify token: keys unavailable"

    @sqlite_only
    def test_unreachable_jwks_does_not_lock_the_address_out(
        self, start: Start, supabase: FakeSupabase
    ) -> None:
        """Plática's failure to fetch the keys is not a wrong guess: no 429 for the address."""
        supabase.add_key("ES256")
        api = start(SUPABASE_URL="http://127.0.0.1:9")
        user = api.link_supabase_user(api.a.id)

        statuses = {
            api.get("/api/sms/stats", token=supabase.token(user)).status_code for _ in range(12)
        }

        assert statuses == {401}
        api.ok(api.get("/api/sms/stats"))  # the API key still works from this address
        for _ in range(10):
            refused(api.get("/api/sms/stats", token="plk_wrong"))
        assert api.get("/api/sms/stats").status_code == 429  # wrong credentials still count

    @sqlite_only
    def test_failing_jwks_is_refused(self, start: Start, supabase: FakeSupabase) -> None:
        supabase.add_key("ES256")
        supabase.fail_next("500")
        api = start()
        user = api.link_supabase_user(api.a.id)

        message = refused(api.get("/api/sms/stats", token=supabase.token(user)))

        assert message == "could not verify token: keys unavailable"
        assert supabase.fetches == 1

    @sqlite_only
    def test_user_without_account_is_refused(self, start: Start, supabase: FakeSupabase) -> None:
        supabase.add_key("ES256")
        api = start()

        message = refused(api.get("/api/sms/stats", token=supabase.token(uuid.uuid4())))

        assert "no Plática account" in message
        assert "platica accounts link-user" in message


@sqlite_only
class TestRefusedTokens:
    """Each bad token gets a 401 that says what is wrong with it."""

    @pytest.fixture
    def api(self, start: Start, supabase: FakeSupabase) -> Api:
        supabase.add_key("RS256")
        return start(SUPABASE_JWT_SECRET=JWT_SECRET)

    def test_expired(self, api: Api, supabase: FakeSupabase) -> None:
        user = api.link_supabase_user(api.a.id)
        token = supabase.token(user, expires_in=timedelta(minutes=-1))
        assert refused(api.get("/api/sms/stats", token=token)) == "token expired"

    def test_wrong_audience(self, api: Api, supabase: FakeSupabase) -> None:
        user = api.link_supabase_user(api.a.id)
        token = supabase.token(user, audience="anon")
        message = refused(api.get("/api/sms/stats", token=token))
        assert message == "token is not for audience 'authenticated'"

    def test_another_project(self, api: Api, supabase: FakeSupabase) -> None:
        user = api.link_supabase_user(api.a.id)
        token = supabase.token(user, iss="https://otherproject.supabase.co/auth/v1")
        message = refused(api.get("/api/sms/stats", token=token))
        assert message.startswith("token issuer is not this project")

    def test_alg_none(self, api: Api, supabase: FakeSupabase) -> None:
        user = api.link_supabase_user(api.a.id)
        [kid] = supabase.published
        for alg in ("none", "None"):
            token = hand_made({"alg": alg, "typ": "JWT", "kid": kid}, supabase.claims(user), None)
            message = refused(api.get("/api/sms/stats", token=token))
            assert message == "unsigned tokens (alg none) are refused"

    def test_hs256_signed_with_the_public_key(self, api: Api, supabase: FakeSupabase) -> None:
        """HS/RS confusion: an HMAC whose secret is the RSA key the JWKS publishes."""
        user = api.link_supabase_user(api.a.id)
        [kid] = supabase.published
        header = {"alg": "HS256", "typ": "JWT", "kid": kid}
        forged = hand_made(header, supabase.claims(user), supabase.public_pem(kid))

        # Before the keys are fetched: checked against the legacy secret, and wrong.
        assert refused(api.get("/api/sms/stats", token=forged)) == "invalid token signature"
        api.ok(api.get("/api/sms/stats", token=supabase.token(user)))  # the keys are fetched
        message = refused(api.get("/api/sms/stats", token=forged))
        assert message == f"token algorithm HS256 does not match its key {kid!r} (RS256)"

    def test_algorithm_other_than_its_key(self, api: Api, supabase: FakeSupabase) -> None:
        user = api.link_supabase_user(api.a.id)
        [rsa_kid] = supabase.published
        ec_kid = supabase.add_key("ES256", publish=False)
        # An ES256 signature naming the RSA key's kid.
        token = supabase.token(user, kid=ec_kid).split(".")
        header = json.loads(base64.urlsafe_b64decode(token[0] + "=="))
        header["kid"] = rsa_kid
        forged = ".".join([b64(json.dumps(header).encode()), token[1], token[2]])

        message = refused(api.get("/api/sms/stats", token=forged))
        assert message == f"token algorithm ES256 does not match its key {rsa_kid!r} (RS256)"

    def test_subject_not_a_user_id(self, api: Api, supabase: FakeSupabase) -> None:
        token = supabase.token("service")
        message = refused(api.get("/api/sms/stats", token=token))
        assert message == "token subject (sub) is not a Supabase user id"

    def test_garbage(self, api: Api) -> None:
        assert refused(api.get("/api/sms/stats", token="abc.def.ghi")) == "malformed token"


@sqlite_only
class TestLegacySecret:
    def test_hs256_with_the_secret_alone(self, start: Start) -> None:
        api = start(SUPABASE_URL=None, SUPABASE_JWT_SECRET=JWT_SECRET)
        user = api.link_supabase_user(api.a.id)

        assert api.ok(api.get("/api/sms/stats", token=supabase_token(user)))["channel"] == "sms"
        expired = supabase_token(user, expires_in=timedelta(minutes=-1))
        assert refused(api.get("/api/sms/stats", token=expired)) == "token expired"

    def test_both_kinds_with_both_settings(self, start: Start, supabase: FakeSupabase) -> None:
        supabase.add_key("ES256")
        api = start(SUPABASE_JWT_SECRET=JWT_SECRET)
        user = api.link_supabase_user(api.a.id)

        api.ok(api.get("/api/sms/stats", token=supabase_token(user)))
        api.ok(api.get("/api/sms/stats", token=supabase.token(user)))

    def test_hs256_without_the_secret(self, start: Start, supabase: FakeSupabase) -> None:
        supabase.add_key("ES256")
        api = start()
        user = api.link_supabase_user(api.a.id)

        message = refused(api.get("/api/sms/stats", token=supabase_token(user)))

        assert message.startswith("HS256 tokens are accepted only with SUPABASE_JWT_SECRET")

    def test_es256_without_supabase_url(self, start: Start, supabase: FakeSupabase) -> None:
        supabase.add_key("ES256")
        api = start(SUPABASE_URL=None, SUPABASE_JWT_SECRET=JWT_SECRET)
        user = api.link_supabase_user(api.a.id)

        message = refused(api.get("/api/sms/stats", token=supabase.token(user)))

        assert message.startswith("ES256 tokens are accepted only with SUPABASE_URL set")
