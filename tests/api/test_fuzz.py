"""Fuzzing the live server: no input may get a 5xx.

* Every operation of /openapi.json, driven by schemathesis (valid and invalid inputs it derives from
  the schema), with a valid API key, on a server whose database already holds conversations.
* The webhooks too: their form fields are not in the OpenAPI schema (Twilio's form post is read by
  hand), so schemathesis alone would only post empty bodies; a Hypothesis strategy builds
  Twilio-shaped forms (plausible and garbage values, extra fields), signed like Twilio signs them.

Both are bounded (no deadline; on SQLite 30 examples per operation and 40 per webhook, on
PostgreSQL a third of that) to stay within about a minute.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from platica.accounts import create_api_key
from tests.api.conftest import Api
from tests.factories import ACCOUNT_SID, CONTACT, SMS_NUMBER, WHATSAPP_NUMBER, new_sid, sign
from tests.polling import wait_for
from tests.records import in_session

# SQLite gets the full budget; PostgreSQL (slower per request) a third of it, for what only it
# refuses (NUL in text, integers past bigint, ...).
EXAMPLES_PER_OPERATION = 30
EXAMPLES_PER_WEBHOOK = 40


def budget(api: Api, examples: int) -> int:
    return examples if api.database_url.startswith("sqlite") else examples // 3


KEYS = 8


@pytest.fixture
def populated(api: Api) -> Api:
    """Some conversations for the generated ids to land on: answered, opted out, closed, on both
    channels."""
    api.send("sms", body="Hola")
    api.send("sms", sender="+34600000002", body="STOP")
    api.send("whatsapp", body="Hola")
    wait_for(lambda: api.settled() and len(api.twilio.sent) >= 2, "the first answers")
    closed = api.conversation_id("+34600000002")
    api.ok(api.post(f"/api/sms/conversations/{closed}/close"))
    return api


def test_no_operation_answers_a_server_error(populated: Api, subtests: Any) -> None:
    """schemathesis over every operation of /openapi.json, valid and invalid inputs alike, and
    valid inputs on the conversations that exist.

    `schemathesis.pytest.from_fixture` cannot be used: schemathesis 4.32 renames pytest items
    through `Function._nodeid`, which pytest 9.2 no longer has. Its strategies work as they are.
    The calls go round several keys of account A, so that the API's per-credential rate limit
    answers 429 to none of them.
    """
    schema = schemathesis.openapi.from_url(populated.server.url + "/openapi.json")
    keys = itertools.cycle(
        [populated.a.key]
        + [
            in_session(populated.database_url, lambda s: create_api_key(s, populated.a.id))
            for _ in range(KEYS - 1)
        ]
    )
    existing = [int(row.id) for row in populated.database.rows("SELECT id FROM conversations")]
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert len(operations) >= 16
    for operation in operations:
        strategies = [
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        ]
        if "{conversation_id}" in operation.path:
            strategies += [
                operation.as_strategy(
                    GenerationMode.POSITIVE, path_parameters={"conversation_id": ident}
                )
                for ident in existing
            ]

        @given(case=st.one_of(strategies))
        @settings(
            max_examples=budget(populated, EXAMPLES_PER_OPERATION),
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def call(case: Any) -> None:
            headers = {"Authorization": f"Bearer {next(keys)}"}
            response = case.call(headers=headers)
            if response.status_code >= 500:
                populated.quiesce()  # see Api.quiesce
            case.validate_response(response, checks=[not_a_server_error], headers=headers)

        with subtests.test(operation.label):
            call()


# -- the webhooks: Twilio-shaped forms -------------------------------------------------------------

TEXT = st.text(max_size=40)
CONTACTS = st.sampled_from([CONTACT, "+34600000002", "+447700900123"]) | st.from_regex(
    r"\A\+[1-9][0-9]{6,14}\Z"
)
STATUSES = ["queued", "sent", "delivered", "read", "failed", "undelivered", "canceled"]


@st.composite
def twilio_forms(draw: st.DrawFn, endpoint: str, known_sids: list[str]) -> dict[str, str]:
    """A form as Twilio posts it; then, in most examples, one thing wrong with it: a field's
    value replaced by any text, a field missing, or unknown fields added."""
    sid = draw(st.builds(new_sid, st.sampled_from(["SM", "MM"])))
    if endpoint == "status":
        form = {
            "MessageSid": draw(st.sampled_from(known_sids)) if draw(st.booleans()) else sid,
            "MessageStatus": draw(st.sampled_from(STATUSES)),
            "ErrorCode": draw(st.sampled_from(["", "30003", "21610", "63016", "InvalidRequest"])),
            "From": SMS_NUMBER,
            "To": CONTACT,
        }
    else:
        prefix = "whatsapp:" if endpoint == "whatsapp" else ""
        ours = WHATSAPP_NUMBER if endpoint == "whatsapp" else SMS_NUMBER
        form = {
            "MessageSid": sid,
            "From": prefix + draw(CONTACTS),
            "To": prefix + ours,
            "Body": draw(st.text(max_size=300)),
            "ProfileName": draw(TEXT),
            "WaId": draw(TEXT),
        }
        media = draw(st.integers(0, 3))
        form["NumMedia"] = str(media)
        for index in range(media):
            form[f"MediaUrl{index}"] = f"https://api.twilio.com/Media/ME{index}"
            form[f"MediaContentType{index}"] = draw(st.sampled_from(["image/jpeg", "audio/ogg"]))
    form.update(AccountSid=ACCOUNT_SID, ApiVersion="2010-04-01")
    damage = draw(st.sampled_from([None, "value", "missing", "unknown"]))
    if damage == "value":
        form[draw(st.sampled_from(sorted(form)))] = draw(TEXT)
    elif damage == "missing":
        del form[draw(st.sampled_from(sorted(form)))]
    elif damage == "unknown":
        form.update(draw(st.dictionaries(TEXT, TEXT, min_size=1, max_size=3)))
    return form


# The live server's reply worker runs in this process and draws its jitter from `random` while
# Hypothesis draws a form: Hypothesis then blames the strategy, which uses no `random` at all.
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
@pytest.mark.parametrize("endpoint", ["sms", "whatsapp", "status"])
def test_webhooks_never_answer_a_server_error(populated: Api, endpoint: str) -> None:
    url = f"{populated.server.url}/webhook/{endpoint}"
    client = populated.client
    known_sids = [message["sid"] for message in populated.twilio.sent]

    @given(form=twilio_forms(endpoint, known_sids), signed=st.sampled_from([True, True, False]))
    @settings(
        max_examples=budget(populated, EXAMPLES_PER_WEBHOOK),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def post(form: dict[str, str], signed: bool) -> None:
        headers = {"X-Twilio-Signature": sign(url, form) if signed else "bm90IGl0"}
        response = client.post(url, data=form, headers=headers)
        if response.status_code >= 500:
            populated.quiesce()  # see Api.quiesce
        assert response.status_code < 500, (endpoint, form, response.status_code, response.text)
        if not signed:
            # Refused: for the signature, or earlier for a malformed form (NUL, not UTF-8).
            assert response.status_code in (400, 403), (form, response.text)

    post()
    with httpx.Client(timeout=10) as other:
        assert other.get(populated.server.url + "/readyz").status_code == 200
