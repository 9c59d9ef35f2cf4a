"""The operators' REST API (SPEC §5) over real HTTP on SQLite and PostgreSQL: credentials, account
isolation, the figures, listing and paging, history, and steering conversations, with the fake
OpenAI and the fake Twilio answering behind the live server."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from platica.models import utcnow
from platica.texts import built_in
from tests.api.conftest import ADMIN_TOKEN, Api, Said, seed_conversation, supabase_token
from tests.dashboard.media_data import INVOICE, VOICE, MediaThread, seed_media_thread
from tests.factories import CONTACT, SMS_NUMBER, WHATSAPP_NUMBER
from tests.media.samples import jpeg
from tests.polling import wait_for
from tests.records import add_account, in_session

OTHER_CONTACT = "+34600999888"
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/api/{channel}/stats", None),
    ("GET", "/api/{channel}/engagement", None),
    ("GET", "/api/{channel}/conversations", None),
    ("GET", "/api/{channel}/conversations/{id}/history", None),
    ("POST", "/api/{channel}/conversations/{id}/close", None),
    ("POST", "/api/{channel}/conversations/{id}/messages", {"body": "Hola"}),
    ("POST", "/api/{channel}/conversations/{id}/handoff", None),
    ("POST", "/api/{channel}/conversations/{id}/resume", None),
    ("POST", "/api/{channel}/conversations/{id}/retry", None),
    ("GET", "/api/{channel}/media/{id}", None),
    ("GET", "/api/{channel}/config", None),
    ("PUT", "/api/{channel}/config", {"temperature": 0.5}),
    ("POST", "/api/{channel}/messages", {"to": "+34600111222", "body": "Hola"}),
    ("GET", "/api/{channel}/broadcasts", None),
    ("POST", "/api/{channel}/broadcasts", {"body": "Hola", "recipients": ["+34600111222"]}),
    ("GET", "/api/{channel}/broadcasts/{id}", None),
    ("POST", "/api/{channel}/broadcasts/{id}/cancel", None),
]
SPEC_PATHS = frozenset(
    {
        ("get", "/api/{channel}/stats"),
        ("get", "/api/{channel}/engagement"),
        ("get", "/api/{channel}/conversations"),
        ("get", "/api/{channel}/conversations/{id}/history"),
        ("post", "/api/{channel}/conversations/{id}/close"),
        ("post", "/api/{channel}/conversations/{id}/messages"),
        ("post", "/api/{channel}/conversations/{id}/handoff"),
        ("post", "/api/{channel}/conversations/{id}/resume"),
        ("post", "/api/{channel}/conversations/{id}/retry"),
        ("get", "/api/{channel}/config"),
        ("put", "/api/{channel}/config"),
        ("post", "/api/{channel}/messages"),
        ("post", "/api/{channel}/broadcasts"),
        ("get", "/api/{channel}/broadcasts/{id}"),
        ("post", "/api/{channel}/broadcasts/{id}/cancel"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("post", "/webhook/whatsapp"),
        ("post", "/webhook/sms"),
        ("post", "/webhook/status"),
    }
)
CONFIG_FIELDS = {
    "account_id",
    "language",
    "vision",
    "delete_media_after_use",
    "broadcast_mps",
    "channel",
    "phone_number",
    "system_prompt",
    "openai_model",
    "max_tokens",
    "temperature",
    "context_messages",
    "debounce_seconds",
    "sms_max_chars",
    "fallback_message",
    "help_message",
    "opt_out_message",
    "opt_in_message",
    "offline_message",
    "handoff_message",
    "customized",
    "handoff_timeout_minutes",
    "ai_enabled",
    "daily_token_budget",
    "busy_message",
    "tokens_day",
    "tokens_used",
    "updated_at",
}
CONVERSATION_FIELDS = {
    "id",
    "account_id",
    "channel",
    "contact",
    "status",
    "ai_enabled",
    "handoff_until",
    "opted_out",
    "created_at",
    "last_message_at",
    "closed_at",
    "last_message",
    "awaiting_reply",
    "flagged_at",
    "flag_reason",
    "parked_at",
    "parked_error",
    "window_closes_at",
}


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value)


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    return error


def answered_conversation(api: Api, channel: str = "sms", contact: str = CONTACT, **kw: Any) -> int:
    """A conversation whose first message the AI has answered."""
    api.send(channel, sender=contact, body="Hola", **kw)
    wait_for(lambda: api.settled() and api.bodies_sent_to(contact), f"the answer to {contact}")
    return api.conversation_id(contact, channel)


class TestAuth:
    def test_no_credentials_get_401_with_bearer_challenge_everywhere(self, api):
        conversation = answered_conversation(api)
        for method, template, body in ENDPOINTS:
            path = template.format(channel="sms", id=conversation)
            response = api.call(method, path, token=None, json=body)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer", (method, path)
            error = assert_error(response, 401, "unauthorized")
            assert "Bearer" in error["message"]
        assert api.reply_states(conversation) == ["answered"]
        assert len(api.twilio.sent) == 1

    def test_another_scheme_is_refused(self, api):
        response = api.call(
            "GET", "/api/sms/stats", token=None, headers={"Authorization": f"Basic {api.a.key}"}
        )
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"

    @pytest.mark.parametrize(
        "token", ["plk_" + "x" * 43, "not-a-key", "admin-3b1f9a7", "a.b.c"], ids=str
    )
    def test_wrong_or_unknown_key_is_refused(self, api, token):
        response = api.get("/api/sms/stats", token=token)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"

    def test_revoked_key_is_refused(self, api):
        assert api.get("/api/sms/stats").status_code == 200
        api.database.execute("UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP")
        response = api.get("/api/sms/stats")
        error = assert_error(response, 401, "unauthorized")
        assert "revoked" in error["message"]

    def test_key_use_is_recorded(self, api):
        assert api.database.scalar("SELECT last_used_at FROM api_keys") is None
        api.ok(api.get("/api/sms/stats"))
        assert api.database.scalar("SELECT last_used_at FROM api_keys") is not None

    def test_admin_token_works(self, api):
        body = api.ok(api.get("/api/sms/stats", token=ADMIN_TOKEN))
        assert body["channel"] == "sms"

    def test_supabase_jwt_works(self, api):
        conversation = answered_conversation(api)
        user = api.link_supabase_user(api.a.id)
        token = supabase_token(user)
        page = api.ok(api.get("/api/sms/conversations", token=token))
        assert [item["id"] for item in page["items"]] == [conversation]
        api.ok(api.get(f"/api/sms/conversations/{conversation}/history", token=token))

    def test_expired_jwt_is_refused(self, api):
        user = api.link_supabase_user(api.a.id)
        token = supabase_token(user, expires_in=timedelta(minutes=-1))
        assert_error(api.get("/api/sms/stats", token=token), 401, "unauthorized")

    def test_wrongly_signed_jwt_is_refused(self, api):
        user = api.link_supabase_user(api.a.id)
        token = supabase_token(user, secret="another-secret-that-is-long-enough-0123456")
        assert_error(api.get("/api/sms/stats", token=token), 401, "unauthorized")

    def test_jwt_for_another_audience_is_refused(self, api):
        user = api.link_supabase_user(api.a.id)
        token = supabase_token(user, audience="anon")
        assert_error(api.get("/api/sms/stats", token=token), 401, "unauthorized")

    def test_jwt_for_a_user_without_account_is_refused(self, api):
        api.link_supabase_user(api.a.id)
        token = supabase_token(uuid.uuid4())
        error = assert_error(api.get("/api/sms/stats", token=token), 401, "unauthorized")
        assert "no Plática account" in error["message"]


class TestAccountIsolation:
    """Account A's credentials never reach account B's objects: 404, never 403."""

    def _two_accounts(self, api: Api) -> tuple[int, int]:
        """One SMS conversation each, answered; returns (A's id, B's id)."""
        api.send("sms", sender=CONTACT, body="Hola A")
        api.send("sms", sender=OTHER_CONTACT, body="Hola B", tenant=api.b)
        api.send("whatsapp", sender=OTHER_CONTACT, body="Hola B", tenant=api.b)
        wait_for(lambda: api.settled() and len(api.twilio.sent) == 3, "three answers")
        assert api.bodies_sent_to(CONTACT) == ["Echo: Hola A"]
        b_sms = [m for m in api.twilio.sent if m["to"] == OTHER_CONTACT]
        assert [m["from"] for m in b_sms] == [api.b.sms_number]
        return api.conversation_id(CONTACT), api.conversation_id(OTHER_CONTACT)

    def test_key_lists_only_its_accounts_conversations(self, api):
        mine, theirs = self._two_accounts(api)
        page = api.ok(api.get("/api/sms/conversations"))
        assert [item["id"] for item in page["items"]] == [mine]
        assert page["items"][0]["account_id"] == str(api.a.id)
        assert api.ok(api.get("/api/whatsapp/conversations"))["items"] == []
        page_b = api.ok(api.get("/api/sms/conversations", token=api.b.key))
        assert [item["id"] for item in page_b["items"]] == [theirs]
        whatsapp_b = api.ok(api.get("/api/whatsapp/conversations", token=api.b.key))
        assert [item["contact"] for item in whatsapp_b["items"]] == [OTHER_CONTACT]

    def test_another_accounts_conversation_is_404_everywhere(self, api):
        _mine, theirs = self._two_accounts(api)
        before = api.database.rows(
            "SELECT status, ai_enabled, handoff_until FROM conversations WHERE id = :id",
            id=theirs,
        )
        messages_before = api.database.count("messages")
        for method, template, body in ENDPOINTS:
            if "{id}" not in template:
                continue
            path = template.format(channel="sms", id=theirs)
            response = api.call(method, path, json=body)
            error = assert_error(response, 404, "not_found")
            assert str(theirs) in error["message"], (method, path)
        after = api.database.rows(
            "SELECT status, ai_enabled, handoff_until FROM conversations WHERE id = :id",
            id=theirs,
        )
        assert after == before
        assert api.database.count("messages") == messages_before

    def test_account_id_parameter_does_not_widen_a_key(self, api):
        _mine, theirs = self._two_accounts(api)
        response = api.get(f"/api/sms/conversations/{theirs}/history", account_id=str(api.b.id))
        assert_error(response, 404, "not_found")
        page = api.ok(api.get("/api/sms/conversations", account_id=str(api.b.id)))
        assert theirs not in [item["id"] for item in page["items"]]

    def test_config_is_per_account(self, api):
        mine = api.ok(api.get("/api/sms/config"))
        theirs = api.ok(api.get("/api/sms/config", token=api.b.key))
        assert (mine["account_id"], mine["phone_number"]) == (str(api.a.id), SMS_NUMBER)
        assert (theirs["account_id"], theirs["phone_number"]) == (str(api.b.id), api.b.sms_number)
        api.ok(api.put("/api/sms/config", {"system_prompt": "Solo para A."}))
        assert api.ok(api.get("/api/sms/config", token=api.b.key)) == theirs

    def test_stats_count_only_own_account(self, api):
        self._two_accounts(api)
        stats = api.ok(api.get("/api/sms/stats"))
        assert (stats["total_conversations"], stats["total_messages"]) == (1, 2)
        assert stats["active_users_24h"] == 1
        whatsapp = api.ok(api.get("/api/whatsapp/stats"))
        assert (whatsapp["total_conversations"], whatsapp["total_messages"]) == (0, 0)
        engagement = api.ok(api.get("/api/whatsapp/engagement", days=1))
        assert engagement["days"][-1]["messages"] == 0

    def test_admin_sees_every_account(self, api):
        mine, theirs = self._two_accounts(api)
        page = api.ok(api.get("/api/sms/conversations", token=ADMIN_TOKEN))
        assert {item["id"] for item in page["items"]} == {mine, theirs}
        stats = api.ok(api.get("/api/sms/stats", token=ADMIN_TOKEN))
        assert (stats["total_conversations"], stats["total_messages"]) == (2, 4)
        history = api.ok(api.get(f"/api/sms/conversations/{theirs}/history", token=ADMIN_TOKEN))
        assert history["conversation"]["account_id"] == str(api.b.id)
        engagement = api.ok(api.get("/api/sms/engagement", token=ADMIN_TOKEN, days=1))
        assert engagement["days"][-1]["messages"] == 4

    def test_admin_can_narrow_to_one_account(self, api):
        mine, theirs = self._two_accounts(api)
        b = str(api.b.id)
        page = api.ok(api.get("/api/sms/conversations", token=ADMIN_TOKEN, account_id=b))
        assert [item["id"] for item in page["items"]] == [theirs]
        stats = api.ok(api.get("/api/sms/stats", token=ADMIN_TOKEN, account_id=b))
        assert (stats["total_conversations"], stats["total_messages"]) == (1, 2)
        response = api.get(
            f"/api/sms/conversations/{mine}/history", token=ADMIN_TOKEN, account_id=b
        )
        assert_error(response, 404, "not_found")

    def test_supabase_user_sees_only_its_account(self, api):
        mine, theirs = self._two_accounts(api)
        token = supabase_token(api.link_supabase_user(api.b.id))
        page = api.ok(api.get("/api/sms/conversations", token=token))
        assert [item["id"] for item in page["items"]] == [theirs]
        response = api.post(f"/api/sms/conversations/{mine}/close", token=token)
        assert_error(response, 404, "not_found")


class TestStats:
    def test_exact_figures_for_a_known_data_set(self, api):
        now = utcnow()
        a, b = api.a.id, api.b.id

        async def seed(session):
            start = now - timedelta(minutes=10)
            # Answered after 1.5 s and 2.5 s, by the AI.
            await seed_conversation(
                session,
                a,
                "sms",
                "+34600000001",
                [
                    Said("contact", start),
                    Said("ai", start + timedelta(seconds=1.5)),
                    Said("contact", start + timedelta(minutes=5)),
                    Said("ai", start + timedelta(minutes=5, seconds=2.5)),
                ],
            )
            # Three days ago, answered by the fallback after 4 s; closed since.
            earlier = now - timedelta(days=3)
            await seed_conversation(
                session,
                a,
                "sms",
                "+34600000002",
                [Said("contact", earlier), Said("system", earlier + timedelta(seconds=4))],
                status="closed",
            )
            # Ten days ago, unanswered; an operator wrote (not an AI reply: no response time).
            old = now - timedelta(days=10)
            await seed_conversation(
                session,
                a,
                "sms",
                "+34600000003",
                [Said("contact", old), Said("operator", old + timedelta(seconds=30))],
            )
            # Not counted: another channel, another account.
            await seed_conversation(
                session,
                a,
                "whatsapp",
                "+34600000001",
                [Said("contact", start), Said("ai", start + timedelta(seconds=9))],
            )
            await seed_conversation(
                session,
                b,
                "sms",
                "+34600000009",
                [Said("contact", start), Said("ai", start + timedelta(seconds=20))],
            )

        in_session(api.database_url, seed)
        stats = api.ok(api.get("/api/sms/stats"))
        assert stats == {
            "channel": "sms",
            "total_conversations": 3,
            "active_conversations": 2,
            "total_messages": 8,
            "incoming_messages": 4,
            "outgoing_messages": 4,
            "avg_response_time_ms": 2666.7,
            "active_users_24h": 1,
            "active_users_7d": 2,
        }
        whatsapp = api.ok(api.get("/api/whatsapp/stats"))
        assert whatsapp["avg_response_time_ms"] == 9000.0
        assert whatsapp["total_messages"] == 2

    def test_empty_channel_has_zeroes_and_no_average(self, api):
        assert api.ok(api.get("/api/whatsapp/stats")) == {
            "channel": "whatsapp",
            "total_conversations": 0,
            "active_conversations": 0,
            "total_messages": 0,
            "incoming_messages": 0,
            "outgoing_messages": 0,
            "avg_response_time_ms": None,
            "active_users_24h": 0,
            "active_users_7d": 0,
        }

    def test_figures_follow_real_replies(self, api):
        api.send("sms", sender=CONTACT, body="Hola")
        api.send("sms", sender=OTHER_CONTACT, body="Buenas")
        api.send("whatsapp", sender=CONTACT, body="Hola")
        wait_for(lambda: api.settled() and len(api.twilio.sent) == 3, "three answers")
        stats = api.ok(api.get("/api/sms/stats"))
        average = stats.pop("avg_response_time_ms")
        assert isinstance(average, float)
        assert average >= 0
        assert stats == {
            "channel": "sms",
            "total_conversations": 2,
            "active_conversations": 2,
            "total_messages": 4,
            "incoming_messages": 2,
            "outgoing_messages": 2,
            "active_users_24h": 2,
            "active_users_7d": 2,
        }
        assert api.ok(api.get("/api/whatsapp/stats"))["total_messages"] == 2

    def test_unknown_channel_is_422_naming_the_channels(self, api):
        error = assert_error(api.get("/api/telegram/stats"), 422, "validation_error")
        assert "channel" in error["message"]
        assert "whatsapp" in error["message"]
        assert "sms" in error["message"]


class TestEngagement:
    def test_one_entry_per_day_oldest_first_today_last(self, api):
        today = utcnow().date()
        midnight = datetime.combine(today, datetime.min.time(), tzinfo=UTC)
        a = api.a.id

        async def seed(session):
            two_days_ago = midnight - timedelta(days=2) + timedelta(hours=9)
            await seed_conversation(
                session,
                a,
                "sms",
                "+34600000001",
                [Said("contact", two_days_ago), Said("ai", two_days_ago + timedelta(seconds=1))],
            )
            await seed_conversation(
                session,
                a,
                "sms",
                "+34600000002",
                [
                    Said("contact", midnight + timedelta(seconds=1)),
                    Said("ai", midnight + timedelta(seconds=4)),
                    Said("operator", midnight + timedelta(seconds=5)),
                ],
            )
            await seed_conversation(
                session,
                a,
                "sms",
                "+34600000003",
                [Said("contact", midnight + timedelta(seconds=2))],
            )
            # Before the window of 3 days.
            old = midnight - timedelta(days=5)
            await seed_conversation(
                session, a, "sms", "+34600000004", [Said("contact", old), Said("ai", old)]
            )

        in_session(api.database_url, seed)
        body = api.ok(api.get("/api/sms/engagement", days=3))
        assert body["channel"] == "sms"
        assert body["days"] == [
            {
                "date": (today - timedelta(days=2)).isoformat(),
                "messages": 2,
                "incoming_messages": 1,
                "outgoing_messages": 1,
                "conversations": 1,
                "replies": 1,
                "avg_response_time_ms": 1000.0,
            },
            {
                "date": (today - timedelta(days=1)).isoformat(),
                "messages": 0,
                "incoming_messages": 0,
                "outgoing_messages": 0,
                "conversations": 0,
                "replies": 0,
                "avg_response_time_ms": None,
            },
            {
                "date": today.isoformat(),
                "messages": 4,
                "incoming_messages": 2,
                "outgoing_messages": 2,
                "conversations": 2,
                "replies": 1,
                "avg_response_time_ms": 3000.0,
            },
        ]
        week = api.ok(api.get("/api/sms/engagement", days=7))["days"]
        assert [day["date"] for day in week] == [
            (today - timedelta(days=offset)).isoformat() for offset in range(6, -1, -1)
        ]
        assert week[1]["messages"] == 2  # five days ago
        assert sum(day["messages"] for day in week) == 8

    def test_default_is_thirty_days(self, api):
        days = api.ok(api.get("/api/whatsapp/engagement"))["days"]
        assert len(days) == 30
        assert days[-1]["date"] == utcnow().date().isoformat()
        assert all(day["messages"] == 0 and day["avg_response_time_ms"] is None for day in days)

    @pytest.mark.parametrize("days", ["0", "400", "-1", "367", "tres"])
    def test_days_out_of_range_is_422(self, api, days):
        error = assert_error(api.get("/api/sms/engagement", days=days), 422, "validation_error")
        assert "days" in error["message"]


class TestConversations:
    def _senders(self, api: Api, count: int) -> list[str]:
        """`count` conversations, each from its own sender, in order; the AI stays quiet."""
        api.configure(ai_enabled=False)
        senders = [f"+3460010{index:04d}" for index in range(count)]
        for sender in senders:
            api.send("sms", sender=sender, body=f"Soy {sender}")
        wait_for(api.settled, "every message handled")
        return senders

    def test_newest_activity_first(self, api):
        senders = self._senders(api, 4)
        page = api.ok(api.get("/api/sms/conversations"))
        assert [item["contact"] for item in page["items"]] == senders[::-1]
        assert page["next_cursor"] is None
        assert set(page["items"][0]) == CONVERSATION_FIELDS
        # A new message moves its conversation to the top.
        api.send("sms", sender=senders[0], body="Otra vez yo")
        wait_for(api.settled, "the message handled")
        page = api.ok(api.get("/api/sms/conversations"))
        assert [item["contact"] for item in page["items"]] == [senders[0], *senders[:0:-1]]
        stamps = [moment(item["last_message_at"]) for item in page["items"]]
        assert stamps == sorted(stamps, reverse=True)

    def test_only_the_channel_asked_for(self, api):
        api.configure(ai_enabled=False)
        api.send("whatsapp", body="Hola")
        wait_for(api.settled, "the message handled")
        assert api.ok(api.get("/api/sms/conversations"))["items"] == []
        items = api.ok(api.get("/api/whatsapp/conversations"))["items"]
        assert [(item["channel"], item["contact"]) for item in items] == [("whatsapp", CONTACT)]

    def test_status_filter(self, api):
        senders = self._senders(api, 3)
        closed = api.conversation_id(senders[1])
        api.ok(api.post(f"/api/sms/conversations/{closed}/close"))
        active = api.ok(api.get("/api/sms/conversations", status="active"))["items"]
        assert [item["contact"] for item in active] == [senders[2], senders[0]]
        assert {item["status"] for item in active} == {"active"}
        done = api.ok(api.get("/api/sms/conversations", status="closed"))["items"]
        assert [item["id"] for item in done] == [closed]
        assert done[0]["status"] == "closed"
        assert len(api.ok(api.get("/api/sms/conversations"))["items"]) == 3

    def test_unknown_status_is_422(self, api):
        error = assert_error(
            api.get("/api/sms/conversations", status="bogus"), 422, "validation_error"
        )
        assert "status" in error["message"]

    @pytest.mark.parametrize("limit", ["0", "201", "-5", "ten"])
    def test_limit_out_of_range_is_422(self, api, limit):
        error = assert_error(
            api.get("/api/sms/conversations", limit=limit), 422, "validation_error"
        )
        assert "limit" in error["message"]

    def test_limit_bounds_are_accepted(self, api):
        self._senders(api, 2)
        one = api.ok(api.get("/api/sms/conversations", limit=1))
        assert len(one["items"]) == 1
        assert one["next_cursor"]
        assert len(api.ok(api.get("/api/sms/conversations", limit=200))["items"]) == 2

    def test_cursor_walks_every_page_once(self, api):
        senders = self._senders(api, 7)
        seen: list[list[str]] = []
        cursor = None
        for _ in range(10):
            params: dict[str, Any] = {"limit": 3}
            if cursor is not None:
                params["cursor"] = cursor
            page = api.ok(api.get("/api/sms/conversations", **params))
            seen.append([item["contact"] for item in page["items"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [len(page) for page in seen] == [3, 3, 1]
        assert [contact for page in seen for contact in page] == senders[::-1]

    def test_cursor_pages_through_equal_timestamps(self, api):
        at = utcnow() - timedelta(hours=1)
        a = api.a.id

        async def seed(session):
            return [
                await seed_conversation(
                    session, a, "sms", f"+3460020{index:04d}", [Said("contact", at)]
                )
                for index in range(5)
            ]

        ids = in_session(api.database_url, seed)
        walked: list[int] = []
        cursor = None
        for _ in range(10):
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = api.ok(api.get("/api/sms/conversations", **params))
            walked += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert walked == sorted(ids, reverse=True)

    @pytest.mark.parametrize(
        "cursor",
        [
            "garbage",
            "!!!",
            "é",
            base64.urlsafe_b64encode(b"not a date|12").decode(),
            base64.urlsafe_b64encode(b"2026-01-01T00:00:00|12").decode(),  # no zone
            base64.urlsafe_b64encode(b"2026-01-01T00:00:00+00:00|twelve").decode(),
            base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        ],
        ids=str,
    )
    def test_garbage_cursor_is_400(self, api, cursor):
        error = assert_error(api.get("/api/sms/conversations", cursor=cursor), 400, "bad_request")
        assert "cursor" in error["message"]

    def test_cursor_with_an_id_out_of_range_is_400(self, api):
        cursor = base64.urlsafe_b64encode(b"2026-01-01T00:00:00+00:00|" + b"9" * 30).decode()
        error = assert_error(api.get("/api/sms/conversations", cursor=cursor), 400, "bad_request")
        assert "cursor" in error["message"]

    def test_last_message_awaiting_reply_and_opted_out(self, api):
        answered = answered_conversation(api, contact=CONTACT)
        api.send("sms", sender="+34600000077", body="STOP")
        wait_for(api.settled, "the opt-out handled")
        # A long debounce keeps this one waiting for its answer.
        api.configure(debounce_seconds=60)
        api.send("sms", sender=OTHER_CONTACT, body="¿Hay pan?")
        items = {
            item["contact"]: item for item in api.ok(api.get("/api/sms/conversations"))["items"]
        }
        assert items[CONTACT]["id"] == answered
        assert (items[CONTACT]["last_message"], items[CONTACT]["awaiting_reply"]) == (
            "Echo: Hola",
            False,
        )
        assert items[CONTACT]["opted_out"] is False
        assert (items[OTHER_CONTACT]["last_message"], items[OTHER_CONTACT]["awaiting_reply"]) == (
            "¿Hay pan?",
            True,
        )
        assert items["+34600000077"]["opted_out"] is True
        assert items["+34600000077"]["awaiting_reply"] is False


class TestHistory:
    def test_messages_oldest_first_with_delivery_media_and_ai_metadata(self, api):
        photo = api.twilio.add_media(jpeg(40, 30), "image/jpeg")
        api.send(
            "sms",
            body="Mira esta foto",
            NumMedia="1",
            MediaUrl0=photo,
            MediaContentType0="image/jpeg",
        )
        wait_for(lambda: api.settled() and api.twilio.sent, "the first answer")
        conversation = api.conversation_id()
        wait_for(
            lambda: (
                api.database.scalar("SELECT status FROM messages WHERE direction = 'outbound'")
                == "delivered"
            ),
            "the answer delivered",
        )
        api.twilio.fail_next("undelivered:30003")
        api.send("sms", body="¿Y ahora?")
        wait_for(
            lambda: (
                api.database.scalar("SELECT count(*) FROM messages WHERE status = 'undelivered'")
                == 1
            ),
            "the second answer undelivered",
        )

        body = api.ok(api.get(f"/api/sms/conversations/{conversation}/history"))
        assert set(body) == {"conversation", "messages"}
        assert body["conversation"]["id"] == conversation
        assert set(body["conversation"]) == CONVERSATION_FIELDS
        messages = body["messages"]
        # The LLM is told about the photo; the fake echoes what it was told.
        assert [(m["direction"], m["author"], m["body"]) for m in messages] == [
            ("inbound", "contact", "Mira esta foto"),
            ("outbound", "ai", "Echo: [image (you cannot see it)]\nMira esta foto"),
            ("inbound", "contact", "¿Y ahora?"),
            ("outbound", "ai", "Echo: ¿Y ahora?"),
        ]
        ids = [m["id"] for m in messages]
        assert ids == sorted(ids)
        first_in, first_out, _second_in, second_out = messages
        [photo_item] = first_in["media"]
        assert photo_item == {
            "id": photo_item["id"],
            "kind": "image",
            "content_type": "image/jpeg",
            "state": "understood",
            "text": None,
            "error": None,
        }
        assert first_out["media"] == []
        assert first_in["status"] == "received"
        assert first_in["reply_state"] == "answered"
        assert first_in["model"] is None
        assert first_out["status"] == "delivered"
        assert first_out["error_code"] is None
        assert first_out["reply_to_id"] == first_in["id"]
        assert first_out["twilio_sid"] == api.twilio.sent[0]["sid"]
        assert first_out["model"] == "gpt-4o-mini"
        assert first_out["prompt_tokens"] > 0
        assert first_out["completion_tokens"] > 0
        assert first_out["latency_ms"] >= 0
        assert (first_out["encoding"], first_out["segments"]) == ("GSM-7", 1)
        assert second_out["status"] == "undelivered"
        assert second_out["error_code"] == 30003

    def test_limit_keeps_the_newest(self, api):
        conversation = answered_conversation(api)
        api.send("sms", body="Segunda")
        wait_for(lambda: api.settled() and len(api.twilio.sent) == 2, "the second answer")
        body = api.ok(api.get(f"/api/sms/conversations/{conversation}/history", limit=2))
        assert [m["body"] for m in body["messages"]] == ["Segunda", "Echo: Segunda"]

    def test_nonexistent_conversation_is_404(self, api):
        error = assert_error(api.get("/api/sms/conversations/987654/history"), 404, "not_found")
        assert "987654" in error["message"]

    def test_conversation_of_the_other_channel_is_404(self, api):
        conversation = answered_conversation(api)
        assert_error(
            api.get(f"/api/whatsapp/conversations/{conversation}/history"), 404, "not_found"
        )

    @pytest.mark.parametrize("ident", ["0", "-1", str(2**63), "9" * 40, "abc", "1.5"])
    def test_id_out_of_range_is_422(self, api, ident):
        error = assert_error(
            api.get(f"/api/sms/conversations/{ident}/history"), 422, "validation_error"
        )
        assert "conversation_id" in error["message"]


class TestClose:
    def test_returns_the_closed_conversation(self, api):
        conversation = answered_conversation(api)
        before = utcnow()
        body = api.ok(api.post(f"/api/sms/conversations/{conversation}/close"))
        assert set(body) == CONVERSATION_FIELDS
        assert (body["id"], body["status"], body["contact"]) == (conversation, "closed", CONTACT)
        assert moment(body["closed_at"]) >= before - timedelta(seconds=1)
        assert (
            api.database.scalar("SELECT status FROM conversations WHERE id = :id", id=conversation)
            == "closed"
        )

    def test_closing_twice_gives_the_same_result(self, api):
        conversation = answered_conversation(api)
        first = api.ok(api.post(f"/api/sms/conversations/{conversation}/close"))
        second = api.ok(api.post(f"/api/sms/conversations/{conversation}/close"))
        assert second == first

    def test_next_message_opens_a_new_conversation(self, api):
        conversation = answered_conversation(api)
        api.ok(api.post(f"/api/sms/conversations/{conversation}/close"))
        api.send("sms", body="Hola otra vez")
        wait_for(lambda: api.settled() and len(api.twilio.sent) == 2, "the second answer")
        new = api.conversation_id()
        assert new != conversation
        items = api.ok(api.get("/api/sms/conversations"))["items"]
        assert [(item["id"], item["status"]) for item in items] == [
            (new, "active"),
            (conversation, "closed"),
        ]
        old = api.ok(api.get(f"/api/sms/conversations/{conversation}/history"))
        assert [m["body"] for m in old["messages"]] == ["Hola", "Echo: Hola"]
        fresh = api.ok(api.get(f"/api/sms/conversations/{new}/history"))
        assert [m["body"] for m in fresh["messages"]] == ["Hola otra vez", "Echo: Hola otra vez"]


class TestManualReply:
    def test_is_sent_through_twilio_and_pauses_the_ai(self, api):
        conversation = answered_conversation(api)
        before = utcnow()
        response = api.post(
            f"/api/sms/conversations/{conversation}/messages", {"body": "  Soy Lola, dime.  "}
        )
        message = api.ok(response, 202)
        assert (message["direction"], message["author"], message["body"]) == (
            "outbound",
            "operator",
            "Soy Lola, dime.",
        )
        assert message["model"] is None
        assert (message["encoding"], message["segments"]) == ("GSM-7", 1)
        wait_for(lambda: "Soy Lola, dime." in api.bodies_sent_to(CONTACT), "the manual reply")
        sent = [m for m in api.twilio.sent if m["body"] == "Soy Lola, dime."]
        assert sent[0]["from"] == SMS_NUMBER
        wait_for(
            lambda: (
                api.database.scalar("SELECT status FROM messages WHERE id = :id", id=message["id"])
                == "delivered"
            ),
            "the manual reply delivered",
        )
        history = api.ok(api.get(f"/api/sms/conversations/{conversation}/history"))
        assert history["messages"][-1]["id"] == message["id"]
        assert history["messages"][-1]["twilio_sid"] == sent[0]["sid"]
        paused = history["conversation"]
        assert paused["ai_enabled"] is False
        until = moment(paused["handoff_until"])
        assert before + timedelta(minutes=59) < until < utcnow() + timedelta(minutes=61)
        assert paused["last_message"] == "Soy Lola, dime."

    def test_on_whatsapp(self, api):
        conversation = answered_conversation(api, "whatsapp")
        api.ok(
            api.post(f"/api/whatsapp/conversations/{conversation}/messages", {"body": "*Hola*"}),
            202,
        )
        wait_for(lambda: len(api.twilio.sent) == 2, "the manual reply")
        assert api.twilio.sent[1]["from"] == f"whatsapp:{WHATSAPP_NUMBER}"
        assert api.twilio.sent[1]["to"] == f"whatsapp:{CONTACT}"
        assert api.twilio.sent[1]["body"] == "*Hola*"

    def test_next_inbound_waits_for_the_operator(self, api):
        conversation = answered_conversation(api)
        api.ok(
            api.post(f"/api/sms/conversations/{conversation}/messages", {"body": "Aquí Lola"}), 202
        )
        wait_for(lambda: len(api.twilio.sent) == 2 and api.settled(), "the manual reply")
        api.send("sms", body="Gracias, Lola")
        wait_for(lambda: len(api.reply_states(conversation)) == 2, "stored")
        assert api.reply_states(conversation) == ["answered", "pending"]
        assert len(api.openai.requests) == 1
        assert [m["body"] for m in api.twilio.sent] == ["Echo: Hola", "Aquí Lola"]

    def test_invalid_bodies_are_422(self, api, subtests):
        conversation = answered_conversation(api)
        path = f"/api/sms/conversations/{conversation}/messages"
        cases: list[tuple[str, Any]] = [
            ("empty", {"body": ""}),
            ("blank", {"body": "   \n "}),
            ("missing", {}),
            ("null", {"body": None}),
            ("not a string", {"body": 42}),
            ("extra field", {"body": "Hola", "media_url": "https://example.com/a.jpg"}),
            ("over 1600", {"body": "a" * 1601}),
        ]
        for name, payload in cases:
            with subtests.test(name):
                error = assert_error(api.post(path, payload), 422, "validation_error")
                field = "media_url" if name == "extra field" else "body"
                assert field in error["message"]
                assert [problem["field"] for problem in error["fields"]] == [field]
        with subtests.test("not an object"):
            assert_error(api.post(path, ["Hola"]), 422, "validation_error")
        assert len(api.twilio.sent) == 1
        assert api.database.scalar("SELECT count(*) FROM messages WHERE author = 'operator'") == 0
        # 1600 characters is still fine.
        api.ok(api.post(path, {"body": "a" * 1600}), 202)

    def test_closed_conversation_is_409(self, api):
        conversation = answered_conversation(api)
        api.ok(api.post(f"/api/sms/conversations/{conversation}/close"))
        response = api.post(f"/api/sms/conversations/{conversation}/messages", {"body": "¿Hola?"})
        error = assert_error(response, 409, "conflict")
        assert "closed" in error["message"]
        assert api.database.scalar("SELECT count(*) FROM messages WHERE author = 'operator'") == 0

    def test_opted_out_contact_is_409(self, api):
        api.send("sms", body="STOP")
        wait_for(api.settled, "the opt-out handled")
        conversation = api.conversation_id()
        response = api.post(f"/api/sms/conversations/{conversation}/messages", {"body": "¿Hola?"})
        error = assert_error(response, 409, "conflict")
        assert "opted out" in error["message"]
        assert api.twilio.sent == []

    def test_nul_character_is_422(self, api):
        """PostgreSQL cannot store NUL in text; the API says so instead of failing."""
        conversation = answered_conversation(api)
        response = api.post(f"/api/sms/conversations/{conversation}/messages", {"body": "a\x00b"})
        error = assert_error(response, 422, "validation_error")
        assert "body" in error["message"]
        assert api.database.scalar("SELECT count(*) FROM messages WHERE author = 'operator'") == 0


class TestHandoff:
    def test_handoff_pauses_the_ai_for_the_configured_time(self, api):
        conversation = answered_conversation(api)
        api.ok(api.put("/api/sms/config", {"handoff_timeout_minutes": 5}))
        before = utcnow()
        body = api.ok(api.post(f"/api/sms/conversations/{conversation}/handoff"))
        assert set(body) == CONVERSATION_FIELDS
        assert body["ai_enabled"] is False
        until = moment(body["handoff_until"])
        assert before + timedelta(minutes=4) < until < utcnow() + timedelta(minutes=6)
        wait_for(lambda: api.settled() and len(api.twilio.sent) == 2, "the handoff notice")
        api.send("sms", body="¿Hay alguien?")
        # It waits for the operator (the inbox shows it awaiting a reply), unanswered by the AI.
        wait_for(lambda: len(api.reply_states(conversation)) == 2, "stored")
        assert api.reply_states(conversation) == ["answered", "pending"]
        assert api.twilio.sent[1]["body"] == built_in("es", "handoff_message")
        assert len(api.twilio.sent) == 2
        [item] = api.ok(api.get("/api/sms/conversations"))["items"]
        assert (item["awaiting_reply"], item["last_message"]) == (True, "¿Hay alguien?")

    def test_resume_gives_the_conversation_back_to_the_ai(self, api):
        conversation = answered_conversation(api)
        api.ok(api.post(f"/api/sms/conversations/{conversation}/handoff"))
        wait_for(lambda: api.settled() and len(api.twilio.sent) == 2, "the handoff notice")
        body = api.ok(api.post(f"/api/sms/conversations/{conversation}/resume"))
        assert (body["ai_enabled"], body["handoff_until"]) == (True, None)
        again = api.ok(api.post(f"/api/sms/conversations/{conversation}/resume"))
        assert (again["ai_enabled"], again["handoff_until"]) == (True, None)
        api.send("sms", body="¿Sigues ahí?")
        wait_for(lambda: api.settled() and len(api.twilio.sent) == 3, "the AI's answer")
        assert api.twilio.sent[2]["body"] == "Echo: ¿Sigues ahí?"
        assert api.reply_states(conversation) == ["answered", "answered"]

    def test_resume_after_a_manual_reply(self, api):
        conversation = answered_conversation(api)
        api.ok(api.post(f"/api/sms/conversations/{conversation}/messages", {"body": "Lola"}), 202)
        wait_for(lambda: len(api.twilio.sent) == 2 and api.settled(), "the manual reply")
        api.ok(api.post(f"/api/sms/conversations/{conversation}/resume"))
        api.send("sms", body="Vale")
        wait_for(lambda: api.settled() and len(api.twilio.sent) == 3, "the AI's answer")
        assert api.twilio.sent[2]["body"] == "Echo: Vale"


def park(api: Api, conversation: int) -> None:
    """As the runner parks a conversation its reply task kept crashing on."""
    api.database.execute(
        "UPDATE conversations SET parked_at = :at, parked_error = :error, crash_count = 5"
        " WHERE id = :id",
        at=utcnow(),
        error="IntegrityError: duplicate key value violates unique constraint",
        id=conversation,
    )


class TestRetry:
    def test_a_parked_conversation_shows_why(self, api):
        conversation = answered_conversation(api)
        park(api, conversation)

        history = api.ok(api.get(f"/api/sms/conversations/{conversation}/history"))
        assert history["conversation"]["parked_at"] is not None
        assert history["conversation"]["parked_error"].startswith("IntegrityError")
        [item] = api.ok(api.get("/api/sms/conversations"))["items"]
        assert item["parked_at"] is not None

    def test_retry_unparks_it_and_its_messages_are_answered(self, api):
        conversation = answered_conversation(api)
        park(api, conversation)
        api.send("sms", body="¿Hola?")
        # A new message does not unpark it: the operator decides.
        assert api.database.scalar(
            "SELECT parked_at FROM conversations WHERE id = :id", id=conversation
        )

        body = api.ok(api.post(f"/api/sms/conversations/{conversation}/retry"))

        assert set(body) == CONVERSATION_FIELDS
        assert (body["parked_at"], body["parked_error"]) == (None, None)
        wait_for(lambda: api.settled() and len(api.twilio.sent) == 2, "the answer")
        assert api.twilio.sent[1]["body"] == "Echo: ¿Hola?"
        assert (
            api.database.scalar(
                "SELECT crash_count FROM conversations WHERE id = :id", id=conversation
            )
            == 0
        )

    def test_retrying_a_conversation_that_is_not_parked_changes_nothing(self, api):
        conversation = answered_conversation(api)
        before = api.ok(api.get(f"/api/sms/conversations/{conversation}/history"))

        body = api.ok(api.post(f"/api/sms/conversations/{conversation}/retry"))

        assert body == before["conversation"]


class TestMedia:
    @staticmethod
    def _seed(api: Api) -> tuple[MediaThread, MediaThread]:
        """Account A's media thread (its invoice only at the fake Twilio) and another account's."""
        invoice_url = api.twilio.add_media(INVOICE, "application/pdf")

        async def seed(session: AsyncSession) -> tuple[MediaThread, MediaThread]:
            ours = await seed_media_thread(session, api.a.id, invoice_url=invoice_url)
            other = await add_account(session, "Panadería C")
            theirs = await seed_media_thread(session, other.id, address=OTHER_CONTACT)
            return ours, theirs

        return in_session(api.database_url, seed)

    def test_kept_bytes_and_twilio_copy_are_served(self, api):
        ours, _theirs = self._seed(api)
        voice = api.get(f"/api/whatsapp/media/{ours.voice}")
        assert voice.status_code == 200
        assert voice.content == VOICE
        assert voice.headers["content-type"] == "audio/ogg"
        assert voice.headers["content-disposition"] == f'inline; filename="audio-{ours.voice}.ogg"'
        assert voice.headers["x-content-type-options"] == "nosniff"
        assert voice.headers["cache-control"].startswith("private, max-age=")

        invoice = api.get(f"/api/whatsapp/media/{ours.invoice}")
        assert invoice.status_code == 200
        assert invoice.content == INVOICE
        assert invoice.headers["content-type"] == "application/pdf"
        assert invoice.headers["content-disposition"].startswith("attachment;")
        assert [r["authorised"] for r in api.twilio.media_requests] == [True]
        # Fetched for the caller, not stored: the reply task reads it in its own time.
        assert api.database.scalar("SELECT state FROM media WHERE id = :id", id=ours.invoice) == (
            "pending"
        )

    def test_another_accounts_media_is_404(self, api):
        ours, theirs = self._seed(api)
        error = assert_error(api.get(f"/api/whatsapp/media/{theirs.voice}"), 404, "not_found")
        assert str(theirs.voice) in error["message"]
        assert_error(api.get(f"/api/sms/media/{ours.voice}"), 404, "not_found")
        assert_error(
            api.get(f"/api/whatsapp/media/{ours.voice}", token=api.b.key), 404, "not_found"
        )

    def test_admin_sees_every_account_unless_it_names_one(self, api):
        ours, theirs = self._seed(api)
        for item in (ours.voice, theirs.voice):
            response = api.get(f"/api/whatsapp/media/{item}", token=ADMIN_TOKEN)
            assert (response.status_code, response.content) == (200, VOICE)
        assert_error(
            api.get(
                f"/api/whatsapp/media/{theirs.voice}", token=ADMIN_TOKEN, account_id=str(api.a.id)
            ),
            404,
            "not_found",
        )

    def test_what_has_no_bytes_says_why(self, api):
        ours, _theirs = self._seed(api)
        error = assert_error(
            api.get(f"/api/whatsapp/media/{ours.location}"), 404, "media_unavailable"
        )
        assert "is a location" in error["message"]
        api.twilio.fail_always("media:500")
        try:
            error = assert_error(api.get(f"/api/whatsapp/media/{ours.invoice}"), 502, "bad_gateway")
        finally:
            api.twilio.fail_always(None)
        assert "Twilio answered 500" in error["message"]
        assert "try again later" in error["message"]
        api.database.execute(
            "UPDATE media SET deleted_at = created_at WHERE id = :id", id=ours.invoice
        )
        error = assert_error(
            api.get(f"/api/whatsapp/media/{ours.invoice}"), 404, "media_unavailable"
        )
        assert "Twilio's copy was deleted" in error["message"]

    @pytest.mark.parametrize("ident", ["0", str(2**63), "abc"])
    def test_id_out_of_range_is_422(self, api, ident):
        error = assert_error(api.get(f"/api/sms/media/{ident}"), 422, "validation_error")
        assert "media_id" in error["message"]

    def test_documented_in_the_openapi(self, api):
        schema = api.ok(api.get("/openapi.json", token=None))
        operation = schema["paths"]["/api/{channel}/media/{media_id}"]["get"]
        assert operation["description"].startswith("A media item's bytes")
        assert "application/octet-stream" in operation["responses"]["200"]["content"]
        assert set(operation["responses"]) >= {"200", "401", "404", "502"}


class TestConfig:
    def test_get_returns_every_field(self, api):
        body = api.ok(api.get("/api/sms/config"))
        assert set(body) == CONFIG_FIELDS
        updated_at = body.pop("updated_at")
        moment(updated_at)
        assert body == {
            "account_id": str(api.a.id),
            "channel": "sms",
            "phone_number": SMS_NUMBER,
            "system_prompt": body["system_prompt"],
            "openai_model": None,
            "max_tokens": 300,
            "temperature": 0.7,
            "context_messages": 10,
            "debounce_seconds": 0.0,
            "sms_max_chars": 160,
            "fallback_message": body["fallback_message"],
            "help_message": body["help_message"],
            "opt_out_message": body["opt_out_message"],
            "opt_in_message": body["opt_in_message"],
            "offline_message": body["offline_message"],
            "handoff_message": body["handoff_message"],
            "customized": [],
            "handoff_timeout_minutes": 60,
            "ai_enabled": True,
            "daily_token_budget": None,
            "busy_message": body["busy_message"],
            "tokens_day": None,
            "tokens_used": 0,
            "language": "es",
            "vision": False,
            "delete_media_after_use": False,
            "broadcast_mps": 1.0,
        }
        assert body["busy_message"]
        assert body["system_prompt"]
        assert body["fallback_message"]
        assert body["help_message"]
        whatsapp = api.ok(api.get("/api/whatsapp/config"))
        assert (whatsapp["channel"], whatsapp["phone_number"]) == ("whatsapp", WHATSAPP_NUMBER)

    def test_partial_update_persists(self, api):
        before = api.ok(api.get("/api/sms/config"))
        changes = {
            "system_prompt": "Eres el asistente de Panadería Lola.",
            "temperature": 0.2,
            "sms_max_chars": 300,
            "ai_enabled": False,
        }
        body = api.ok(api.put("/api/sms/config", changes))
        expected = {**before, **changes, "customized": ["system_prompt"]}
        assert {k: v for k, v in body.items() if k != "updated_at"} == {
            k: v for k, v in expected.items() if k != "updated_at"
        }
        assert moment(body["updated_at"]) >= moment(before["updated_at"])
        again = api.ok(api.get("/api/sms/config"))
        assert again == body
        assert api.ok(api.get("/api/whatsapp/config"))["system_prompt"] == before["system_prompt"]
        assert api.ok(api.put("/api/sms/config", {})) == again

    def test_update_takes_effect_on_the_next_reply(self, api):
        api.ok(
            api.put(
                "/api/sms/config",
                {
                    "system_prompt": "Eres el asistente de Panadería Lola.",
                    "openai_model": "llama3.1:8b",
                    "max_tokens": 42,
                    "temperature": 0.2,
                },
            )
        )
        api.send("sms", body="Hola")
        wait_for(lambda: api.settled() and api.twilio.sent, "the answer")
        request = api.openai.requests[-1]
        assert request["messages"][0]["role"] == "system"
        assert request["messages"][0]["content"].startswith("Eres el asistente de Panadería Lola.")
        assert (request["model"], request["max_tokens"], request["temperature"]) == (
            "llama3.1:8b",
            42,
            0.2,
        )

    def test_null_model_resets_to_the_default(self, api):
        api.ok(api.put("/api/sms/config", {"openai_model": "my-local-model"}))
        body = api.ok(api.put("/api/sms/config", {"openai_model": None}))
        assert body["openai_model"] is None
        api.send("sms", body="Hola")
        wait_for(lambda: api.settled() and api.twilio.sent, "the answer")
        assert api.openai.requests[-1]["model"] == "gpt-4o-mini"

    def test_a_daily_token_budget_is_set_and_lifted(self, api):
        busy = "Hoy no damos abasto; te respondemos mañana."
        body = api.ok(
            api.put("/api/sms/config", {"daily_token_budget": 20000, "busy_message": busy})
        )
        assert (body["daily_token_budget"], body["busy_message"]) == (20000, busy)
        body = api.ok(api.put("/api/sms/config", {"daily_token_budget": None}))
        assert body["daily_token_budget"] is None
        assert body["busy_message"] == busy

    def test_invalid_values_are_422_naming_the_field(self, api, subtests):
        before = api.ok(api.get("/api/sms/config"))
        cases: list[tuple[str, dict[str, Any]]] = [
            ("temperature", {"temperature": 5}),
            ("temperature", {"temperature": -0.1}),
            ("max_tokens", {"max_tokens": 0}),
            ("max_tokens", {"max_tokens": "many"}),
            ("context_messages", {"context_messages": 0}),
            ("sms_max_chars", {"sms_max_chars": 10}),
            ("debounce_seconds", {"debounce_seconds": -1}),
            ("handoff_timeout_minutes", {"handoff_timeout_minutes": 0}),
            ("system_prompt", {"system_prompt": "x" * 8001}),
            ("fallback_message", {"fallback_message": "x" * 1601}),
            ("opt_out_message", {"opt_out_message": 5}),
            ("openai_model", {"openai_model": "bad model!"}),
            ("openai_model", {"openai_model": ""}),
            ("bogus", {"bogus": 1}),
            ("phone_number", {"phone_number": "+15005550009"}),
            ("ai_enabled", {"ai_enabled": "maybe"}),
            ("daily_token_budget", {"daily_token_budget": 0}),
            ("daily_token_budget", {"daily_token_budget": "lots"}),
            ("handoff_message", {"handoff_message": ["Hola"]}),
        ]
        for name, payload in cases:
            with subtests.test(f"{name}={payload[name]!r}"):
                error = assert_error(api.put("/api/sms/config", payload), 422, "validation_error")
                assert name in error["message"]
                assert [problem["field"] for problem in error["fields"]] == [name]
        # A valid field next to an invalid one changes nothing.
        response = api.put("/api/sms/config", {"temperature": 0.1, "max_tokens": 0})
        assert_error(response, 422, "validation_error")
        assert api.ok(api.get("/api/sms/config")) == before

    def test_null_for_a_required_field_is_422_naming_it(self, api, subtests):
        before = api.ok(api.get("/api/sms/config"))
        for name in ("temperature", "ai_enabled", "max_tokens", "language"):
            with subtests.test(name):
                response = api.put("/api/sms/config", {name: None})
                error = assert_error(response, 422, "validation_error")
                assert name in error["message"]
                assert [problem["field"] for problem in error["fields"]] == [name]
        assert api.ok(api.get("/api/sms/config")) == before

    @pytest.mark.parametrize(
        "name", ["system_prompt", "fallback_message", "help_message", "opt_out_message"]
    )
    def test_nul_character_is_422(self, api, name):
        """PostgreSQL cannot store NUL in text; the API says so instead of failing."""
        before = api.ok(api.get("/api/sms/config"))
        error = assert_error(
            api.put("/api/sms/config", {name: "Hola\x00"}), 422, "validation_error"
        )
        assert name in error["message"]
        assert api.ok(api.get("/api/sms/config")) == before

    def test_admin_must_name_the_account(self, api):
        error = assert_error(api.get("/api/sms/config", token=ADMIN_TOKEN), 400, "bad_request")
        assert "account_id" in error["message"]
        response = api.put("/api/sms/config", {"temperature": 0.3}, token=ADMIN_TOKEN)
        assert_error(response, 400, "bad_request")
        b = str(api.b.id)
        body = api.ok(api.get("/api/sms/config", token=ADMIN_TOKEN, account_id=b))
        assert body["phone_number"] == api.b.sms_number
        changed = api.ok(
            api.put("/api/sms/config", {"temperature": 0.3}, token=ADMIN_TOKEN, account_id=b)
        )
        assert changed["temperature"] == 0.3
        assert api.ok(api.get("/api/sms/config"))["temperature"] == 0.7

    def test_account_without_the_channel_is_404(self, api):
        async def make(session):
            from platica.accounts import create_account

            return (await create_account(session, "Solo SMS", sms_number="+15005550002"))[1]

        key = in_session(api.database_url, make)
        assert api.ok(api.get("/api/sms/config", token=key))["phone_number"] == "+15005550002"
        assert_error(api.get("/api/whatsapp/config", token=key), 404, "not_found")


class TestDocs:
    @staticmethod
    def _normal(path: str) -> str:
        return re.sub(r"\{(?!channel\})[^}]+\}", "{id}", path)

    def test_docs_page_is_served_without_credentials(self, api):
        response = api.get("/docs", token=None)
        assert response.status_code == 200
        assert "text/html" in response.headers["content-type"]
        assert "/openapi.json" in response.text

    def test_openapi_has_every_spec_path(self, api):
        schema = api.ok(api.get("/openapi.json", token=None))
        present = {
            (method, self._normal(path))
            for path, operations in schema["paths"].items()
            for method in operations
        }
        assert present >= SPEC_PATHS, SPEC_PATHS - present
        stats = schema["paths"]["/api/{channel}/stats"]["get"]
        channel = next(p for p in stats["parameters"] if p["name"] == "channel")
        resolved = channel["schema"]
        if "$ref" in resolved:
            resolved = schema["components"]["schemas"][resolved["$ref"].rsplit("/", 1)[-1]]
        assert set(resolved["enum"]) == {"whatsapp", "sms"}
        properties = schema["components"]["schemas"]["StatsRead"]["properties"]
        assert set(properties) == {
            "channel",
            "total_conversations",
            "active_conversations",
            "total_messages",
            "incoming_messages",
            "outgoing_messages",
            "avg_response_time_ms",
            "active_users_24h",
            "active_users_7d",
        }

    def test_openapi_declares_the_bearer_credentials(self, api):
        """/docs can only "Try it out" when the schema says how to authenticate."""
        schema = api.ok(api.get("/openapi.json", token=None))
        schemes = schema.get("components", {}).get("securitySchemes", {})
        bearer = [
            name
            for name, scheme in schemes.items()
            if scheme.get("type") == "http" and scheme.get("scheme", "").lower() == "bearer"
        ]
        assert bearer, f"no HTTP bearer security scheme in {sorted(schemes)}"
        for path, operations in schema["paths"].items():
            if path.startswith("/api/"):
                for method, operation in operations.items():
                    names = {name for item in operation.get("security", []) for name in item}
                    assert names & set(bearer), (method, path)
