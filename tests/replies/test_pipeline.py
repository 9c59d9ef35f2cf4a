"""The reply loop end to end over real HTTP: signed webhooks in, the fake LLM and the fake
Twilio spoken to through the official SDKs, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from platica.texts import built_in
from tests.factories import CONTACT, SMS_NUMBER, WHATSAPP_NUMBER, post_signed
from tests.polling import wait_for
from tests.stack import ADMIN_TOKEN, Stack, live_stack

DEADLINE_SECONDS = 20.0
# The stack's accounts speak Spanish (the default language).
OPT_OUT_ES = built_in("es", "opt_out_message")
OPT_IN_ES = built_in("es", "opt_in_message")


@pytest.fixture
def stack(database_url, live_server) -> Iterator[Stack]:
    with live_stack(database_url, live_server) as created:
        yield created


@pytest.fixture
def short_llm_timeout(monkeypatch):
    """Request it before `stack`: the generator reads the timeout when it is built."""
    monkeypatch.setattr("platica.replies.generator.OPENAI_TIMEOUT_SECONDS", 0.3)


def retry_policy(monkeypatch, **defaults):
    """Every RetryPolicy made from now on (the servers' included) takes these defaults (its
    dataclass __init__ has its own copy of the class's, so setting those would not do)."""
    from platica.replies.context import RetryPolicy

    real_init = RetryPolicy.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **{**defaults, **kwargs})

    monkeypatch.setattr(RetryPolicy, "__init__", init)


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    retry_policy(monkeypatch, backoff_base=0.05)


@pytest.fixture
def backoff_from_200ms(monkeypatch):
    """Request it before `stack`: a backoff slow enough for its spacing to show."""
    retry_policy(monkeypatch, backoff_base=0.2)


class TestReplies:
    def test_each_message_gets_one_reply_from_the_right_number(self, stack):
        stack.send(body="¿Abren el domingo?")
        stack.send("whatsapp", body="Hola")

        wait_for(lambda: len(stack.twilio.sent) == 2 and stack.settled(), "two replies")
        sms, whatsapp = sorted(stack.twilio.sent, key=lambda m: m["to"].startswith("whatsapp:"))
        assert (sms["from"], sms["to"]) == (SMS_NUMBER, CONTACT)
        assert (whatsapp["from"], whatsapp["to"]) == (
            f"whatsapp:{WHATSAPP_NUMBER}",
            f"whatsapp:{CONTACT}",
        )
        assert sms["body"] == "Echo: ¿Abren el domingo?"
        assert whatsapp["body"] == "Echo: Hola"
        assert stack.inbound_states() == ["answered", "answered"]

    def test_reply_records_model_tokens_latency_and_sid(self, stack):
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.outbound(), "the reply")

        reply = stack.outbound()[0]
        assert reply.author == "ai"
        assert reply.model == "gpt-4o-mini"
        assert reply.prompt_tokens > 0
        assert reply.completion_tokens > 0
        assert reply.latency_ms >= 0
        assert reply.twilio_sid == stack.twilio.sent[0]["sid"]
        assert reply.encoding == "GSM-7"
        assert reply.segments == 1

    def test_status_callbacks_track_the_reply_to_delivered(self, stack):
        stack.send(body="Hola")
        wait_for(lambda: [r.status for r in stack.outbound()] == ["delivered"], "delivered status")
        callback = stack.twilio.sent[0]["status_callback"]
        assert callback == stack.server.url + "/webhook/status"

    def test_context_has_the_system_prompt_and_history_in_order(self, stack):
        stack.configure(system_prompt="You are the bakery's assistant.", context_messages=3)
        for text in ("uno", "dos", "tres"):
            stack.send(body=text)
            wait_for(lambda: stack.settled() and len(stack.twilio.sent) >= 1, "a reply")
            wait_for(stack.settled, "settled")

        wait_for(lambda: len(stack.twilio.sent) == 3, "three replies")
        last = stack.openai.requests[-1]
        assert last["messages"][0]["role"] == "system"
        assert last["messages"][0]["content"].startswith("You are the bakery's assistant.")
        history = [(m["role"], m["content"]) for m in last["messages"][1:]]
        assert history == [("user", "dos"), ("assistant", "Echo: dos"), ("user", "tres")]
        assert last["model"] == "gpt-4o-mini"

    def test_account_model_and_limits_are_used(self, stack):
        stack.configure(openai_model="my-local-model", max_tokens=42, temperature=0.2)
        stack.send(body="Hola")
        wait_for(lambda: stack.openai.requests, "an LLM request")
        request = stack.openai.requests[0]
        assert request["model"] == "my-local-model"
        assert request["max_tokens"] == 42
        assert request["temperature"] == 0.2

    def test_repeated_delivery_gets_no_second_reply(self, stack):
        form = stack.send(body="Hola")
        post_signed(stack.client, stack.server.url, "/webhook/sms", form)
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the reply")

        assert len(stack.twilio.sent) == 1
        assert len(stack.openai.requests) == 1

    def test_burst_is_answered_once_together(self, stack):
        stack.configure(debounce_seconds=1.5)
        for text in ("Hola", "quería preguntar", "¿tienen pan sin gluten?"):
            stack.send(body=text)

        wait_for(lambda: stack.settled() and stack.twilio.sent, "one reply")
        assert len(stack.openai.requests) == 1
        users = [m["content"] for m in stack.openai.requests[0]["messages"] if m["role"] == "user"]
        assert users == ["Hola", "quería preguntar", "¿tienen pan sin gluten?"]
        assert len(stack.twilio.sent) == 1
        assert stack.inbound_states() == ["answered"] * 3

    def test_replies_in_one_conversation_stay_in_order(self, stack):
        stack.openai.latency = 0.2
        for index in range(4):
            stack.send(body=f"m{index}")
        wait_for(lambda: stack.settled() and stack.inbound_states() == ["answered"] * 4, "answers")
        bodies = [m["body"] for m in stack.twilio.sent]
        # However they were batched, answers follow the order of the questions.
        assert bodies == sorted(bodies, key=lambda body: body.split()[-1])


class TestChannelShaping:
    def test_sms_never_exceeds_sms_max_chars(self, stack):
        stack.configure(sms_max_chars=100)
        stack.openai.reply = lambda _messages: "**Claro**: " + "palabra " * 80
        stack.send(body="Cuéntame todo")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the reply")

        body = stack.twilio.sent[0]["body"]
        assert 0 < len(body) <= 100
        assert "**" not in body
        reply = stack.outbound()[0]
        assert reply.segments == 1
        assert reply.encoding == "GSM-7"

    def test_long_whatsapp_reply_arrives_as_ordered_parts(self, stack):
        stack.configure(max_tokens=4000)
        paragraphs = [f"Párrafo {i}: " + "texto " * 120 for i in range(6)]
        stack.openai.reply = lambda _messages: "\n\n".join(paragraphs)
        stack.send("whatsapp", body="Explícamelo todo")
        wait_for(lambda: stack.settled() and len(stack.twilio.sent) >= 2, "the parts")

        bodies = [m["body"] for m in stack.twilio.sent]
        assert all(len(body) <= 1600 for body in bodies)
        assert "".join(bodies).replace("\n", "").replace(" ", "") == "".join(paragraphs).replace(
            " ", ""
        )
        parts = [r.part for r in stack.outbound()]
        assert parts == list(range(len(bodies)))

    def test_whatsapp_formatting_is_converted(self, stack):
        stack.openai.reply = lambda _messages: "**Horario**: de *lunes* a ~~domingo~~ sábado"
        stack.send("whatsapp", body="¿Horario?")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the reply")
        assert stack.twilio.sent[0]["body"] == "*Horario*: de _lunes_ a ~domingo~ sábado"


class TestFailures:
    def test_transient_llm_errors_are_retried(self, stack):
        stack.openai.fail_next("500", "429")
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the reply")

        assert stack.twilio.sent[0]["body"] == "Echo: Hola"
        assert len(stack.openai.requests) == 3
        # The 429 gave its attempt back.
        assert (
            stack.database.scalar("SELECT attempts FROM messages WHERE direction = 'inbound'") == 2
        )

    def test_llm_429s_pace_the_reply_instead_of_the_fallback(self, stack):
        """More 429s in a row than LLM attempts: the reply waits for the provider and is the
        AI's, not the fallback."""
        stack.openai.fail_next("429", "429", "429", "429")
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the reply")

        assert [m["body"] for m in stack.twilio.sent] == ["Echo: Hola"]
        assert len(stack.openai.requests) == 5

    def test_the_providers_request_budget_paces_the_replies(self, stack):
        """A budget of 2 requests per window, 5 conversations at once: whatever 429s the first
        concurrent calls get, every message gets the AI's answer, none the fallback."""
        stack.openai.rate_limit_requests, stack.openai.rate_limit_window = 2, 1.5
        senders = [f"+3461100{n:04d}" for n in range(5)]
        for sender in senders:
            stack.send(body="Hola", sender=sender)
        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 5, "five replies")

        assert {m["body"] for m in stack.twilio.sent} == {"Echo: Hola"}

    def test_llm_that_keeps_failing_gets_the_fallback(self, stack):
        stack.configure(fallback_message="Ahora no podemos responder.")
        stack.openai.fail_always("500")
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the fallback")

        assert [m["body"] for m in stack.twilio.sent] == ["Ahora no podemos responder."]
        assert stack.outbound()[0].author == "system"
        note = stack.database.scalar("SELECT note FROM messages WHERE direction = 'inbound'")
        assert note.startswith("fallback sent")
        assert len(stack.openai.requests) == 3

    def test_llm_timeout_is_retried_then_falls_back(self, short_llm_timeout, stack):
        stack.openai.hang_seconds = 5
        stack.openai.fail_always("timeout")
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the fallback")

        assert stack.outbound()[0].author == "system"
        assert len(stack.openai.requests) == 3
        note = stack.database.scalar("SELECT note FROM messages WHERE direction = 'inbound'")
        assert "timed out" in note

    def test_llm_timeout_then_success(self, short_llm_timeout, stack):
        stack.openai.hang_seconds = 5
        stack.openai.fail_next("timeout")
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the reply")
        assert stack.twilio.sent[0]["body"] == "Echo: Hola"

    def test_an_html_page_from_the_llm_is_an_llm_failure_not_a_crash(self, stack):
        """A proxy's HTML page instead of a completion: retried like any LLM failure, then the
        fallback, with why on the message (a crashing task would have used up the attempts
        without a word)."""
        stack.openai.fail_always("html")
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the fallback")

        assert stack.outbound()[0].author == "system"
        assert len(stack.openai.requests) == 3
        note = stack.database.scalar("SELECT note FROM messages WHERE direction = 'inbound'")
        assert "not a chat completion" in note

    def test_out_of_credit_falls_back_at_once(self, stack):
        stack.openai.fail_always("quota")
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the fallback")
        assert len(stack.openai.requests) == 1
        assert stack.outbound()[0].author == "system"

    def test_twilio_429_and_500_are_retried_without_double_sending(self, stack):
        stack.twilio.fail_next("429", "500")
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the reply")

        assert len(stack.twilio.sent) == 1
        assert len(stack.twilio.attempts) == 3
        reply = stack.outbound()[0]
        assert reply.twilio_sid == stack.twilio.sent[0]["sid"]
        assert reply.attempts == 3

    def test_a_failing_lookup_backs_off_and_counts_its_attempts(self, backoff_from_200ms, stack):
        """A send that may have landed (a 500), then Twilio failing every lookup: each lookup
        is an attempt, and the intervals between them grow (exponential backoff), instead of
        one lookup a second for an hour."""
        stack.twilio.fail_next("500")
        stack.twilio.fail_lists("500")
        stack.send(body="Hola")
        wait_for(lambda: len(stack.twilio.list_times) >= 4, "four lookups")

        times = stack.twilio.list_times[:4]
        intervals = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert intervals == sorted(intervals), intervals
        assert intervals[-1] >= 2 * intervals[0], intervals
        # The send and each failed lookup counted. The fourth lookup reaches the fake before
        # its failure is written, so the count is polled, not read once.
        wait_for(
            lambda: (
                stack.database.scalar("SELECT attempts FROM messages WHERE direction = 'outbound'")
                >= 1 + 4
            ),
            "the send and four lookups counted as attempts",
        )
        assert len(stack.twilio.sent) == 0

    def test_the_same_text_twice_with_the_second_send_cut_short_is_sent_once_each(self, stack):
        """Two HELP answers (the same text) to one contact within seconds, the second send
        failing before Twilio created it: looking for it must not take the first one's SID
        (the task then crashed on the unique SID for ever, and the conversation was stuck)."""
        stack.configure(help_message="Escribe tu pregunta; STOP para salir.")
        stack.send("whatsapp", body="HELP")
        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 1, "the first answer")
        stack.twilio.fail_next("500")
        stack.send("whatsapp", body="INFO")
        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 2, "the second answer")
        stack.send("whatsapp", body="¿Abren el domingo?")
        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 3, "the next reply")

        bodies = [m["body"] for m in stack.twilio.sent]
        assert bodies[:2] == ["Escribe tu pregunta; STOP para salir."] * 2
        assert bodies[2] == "Echo: ¿Abren el domingo?"
        sids = [row.twilio_sid for row in stack.outbound()]
        assert sids == [m["sid"] for m in stack.twilio.sent]
        assert stack.database.scalar("SELECT crash_count FROM conversations") == 0

    def test_unsubscribed_recipient_is_recorded_not_retried(self, stack):
        stack.twilio.fail_next("21610")
        stack.send(body="Hola")
        wait_for(stack.settled, "settled")
        wait_for(lambda: stack.outbound() and stack.outbound()[0].status == "failed", "failure")

        reply = stack.outbound()[0]
        assert reply.error_code == 21610
        assert len(stack.twilio.attempts) == 1
        assert stack.database.scalar("SELECT opted_out FROM contacts") in (True, 1)

    def test_delivery_failure_from_callback_keeps_error_code(self, stack):
        stack.twilio.fail_next("undelivered:30003")
        stack.send(body="Hola")
        wait_for(
            lambda: stack.outbound() and stack.outbound()[0].status == "undelivered",
            "undelivered status",
        )
        assert stack.outbound()[0].error_code == 30003


class TestKeywords:
    def test_sms_stop_is_not_answered_and_blocks_later_replies(self, stack):
        stack.send(body="STOP")
        wait_for(stack.settled, "settled")
        stack.send(body="¿Sigues ahí?")
        wait_for(lambda: stack.settled() and len(stack.inbound_states()) == 2, "settled")

        assert stack.twilio.sent == []
        assert stack.openai.requests == []
        assert stack.inbound_states() == ["skipped", "skipped"]
        assert stack.database.scalar("SELECT opted_out FROM contacts") in (True, 1)

    def test_sms_start_resumes_replies(self, stack):
        stack.send(body="STOP")
        wait_for(stack.settled, "settled")
        stack.send(body="START")
        wait_for(stack.settled, "settled")
        stack.send(body="Hola de nuevo")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the reply")

        assert [m["body"] for m in stack.twilio.sent] == ["Echo: Hola de nuevo"]

    def test_sms_help_gets_no_reply_from_plática(self, stack):
        stack.send(body="HELP")
        wait_for(lambda: stack.settled() and stack.inbound_states() == ["skipped"], "settled")
        assert stack.twilio.sent == []
        assert stack.openai.requests == []

    def test_whatsapp_stop_is_confirmed_once(self, stack):
        stack.send("whatsapp", body="stop")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the confirmation")
        stack.send("whatsapp", body="STOP")
        stack.send("whatsapp", body="hola?")
        wait_for(lambda: stack.settled() and len(stack.inbound_states()) == 3, "settled")

        assert len(stack.twilio.sent) == 1
        assert stack.twilio.sent[0]["body"] == OPT_OUT_ES
        assert stack.openai.requests == []

    def test_start_and_a_message_in_one_burst_are_answered_in_order(self, stack):
        """Issue 12's defect 2: the opt-in confirmation was stored after the contact's message,
        so the LLM was asked to answer its own confirmation, and the AI reply reached Twilio
        before it."""
        stack.send("whatsapp", body="STOP")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the opt-out confirmation")
        stack.configure(debounce_seconds=1.0)
        stack.send("whatsapp", body="START")
        stack.send("whatsapp", body="hola otra vez")

        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 3, "two more messages")
        bodies = [m["body"] for m in stack.twilio.sent]
        assert bodies == [OPT_OUT_ES, OPT_IN_ES, "Echo: hola otra vez"]
        [request] = stack.openai.requests
        assert request["messages"][-1] == {"role": "user", "content": "hola otra vez"}
        assert {"role": "assistant", "content": OPT_IN_ES} in request["messages"]
        assert stack.inbound_states() == ["answered", "answered", "answered"]

    def test_a_message_then_help_is_answered_then_helped(self, stack):
        stack.configure(debounce_seconds=1.0, help_message="Escribe tu pregunta.")
        stack.send("whatsapp", body="¿Tienen pan integral?")
        stack.send("whatsapp", body="HELP")

        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 2, "two messages")
        bodies = [m["body"] for m in stack.twilio.sent]
        assert bodies == ["Echo: ¿Tienen pan integral?", "Escribe tu pregunta."]
        [request] = stack.openai.requests
        assert request["messages"][-1]["content"] == "¿Tienen pan integral?"

    def test_a_message_then_stop_in_one_burst_gets_only_the_confirmation(self, stack):
        stack.configure(debounce_seconds=1.0)
        stack.send("whatsapp", body="hola")
        stack.send("whatsapp", body="STOP")

        wait_for(lambda: stack.settled() and len(stack.inbound_states()) == 2, "settled")
        assert [m["body"] for m in stack.twilio.sent] == [OPT_OUT_ES]
        assert stack.openai.requests == []

    def test_whatsapp_help_gets_the_help_message(self, stack):
        stack.configure(help_message="Escribe tu pregunta; STOP para salir.")
        stack.send("whatsapp", body="INFO")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the help message")
        assert [m["body"] for m in stack.twilio.sent] == ["Escribe tu pregunta; STOP para salir."]
        assert stack.openai.requests == []


class TestHandoff:
    def test_paused_conversation_waits_for_the_operator(self, stack):
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the first reply")
        stack.database.execute("UPDATE conversations SET ai_enabled = false")

        stack.send(body="¿Hay alguien?")
        wait_for(
            lambda: (
                stack.database.scalar("SELECT count(*) FROM webhook_logs WHERE endpoint = 'sms'")
                == 2
                and stack.database.scalar("SELECT lease_owner FROM conversations") is None
                and stack.database.scalar("SELECT reply_due_at FROM conversations") is None
            ),
            "the worker to look at it and leave it to the operator",
        )
        assert len(stack.twilio.sent) == 1
        # Awaiting the operator's answer (the inbox says so), not marked unanswered.
        assert stack.inbound_states() == ["answered", "pending"]

    def test_messages_during_a_handoff_are_answered_after_resume(self, stack):
        """Issue 12's defect 7: they stayed unanswered after Resume."""
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the first reply")
        stack.database.execute("UPDATE conversations SET ai_enabled = false")
        stack.send(body="¿Hay alguien?")
        stack.send(body="Necesito ayuda")
        wait_for(lambda: stack.inbound_states() == ["answered", "pending", "pending"], "stored")

        conversation = stack.database.scalar("SELECT id FROM conversations")
        resumed = stack.client.post(
            f"{stack.server.url}/api/sms/conversations/{conversation}/resume",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert resumed.status_code == 200, resumed.text

        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 2, "the AI's answer")
        assert stack.twilio.sent[1]["body"] == "Echo: Necesito ayuda"
        assert [m["content"] for m in stack.openai.requests[-1]["messages"][-2:]] == [
            "¿Hay alguien?",
            "Necesito ayuda",
        ]
        assert stack.inbound_states() == ["answered"] * 3

    def test_a_manual_reply_answers_what_waited(self, stack):
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the first reply")
        stack.database.execute("UPDATE conversations SET ai_enabled = false")
        stack.send(body="¿Hay alguien?")
        wait_for(lambda: stack.inbound_states() == ["answered", "pending"], "stored")

        conversation = stack.database.scalar("SELECT id FROM conversations")
        replied = stack.client.post(
            f"{stack.server.url}/api/sms/conversations/{conversation}/messages",
            json={"body": "Sí, aquí estoy."},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert replied.status_code == 202, replied.text

        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 2, "the operator's reply")
        rows = stack.database.rows(
            "SELECT reply_state, note FROM messages WHERE direction = 'inbound' ORDER BY id"
        )
        assert [tuple(r) for r in rows] == [
            ("answered", None),
            ("answered", "answered by an operator"),
        ]
        # Given back to the AI, nothing is answered twice.
        stack.client.post(
            f"{stack.server.url}/api/sms/conversations/{conversation}/resume",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        stack.send(body="Gracias")
        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 3, "the AI again")
        assert len(stack.openai.requests) == 2

    def test_ai_disabled_for_the_channel(self, stack):
        stack.configure(ai_enabled=False)
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.inbound_states() == ["skipped"], "settled")
        assert stack.twilio.sent == []

    def test_expired_handoff_resumes_the_ai(self, stack):
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the first reply")
        stack.database.execute(
            "UPDATE conversations SET ai_enabled = false, handoff_until = :past",
            past="2020-01-01 00:00:00+00:00",
        )
        stack.send(body="¿Hola?")
        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 2, "the AI's reply")
        assert stack.twilio.sent[1]["body"] == "Echo: ¿Hola?"


def metric(stack: Stack, line_start: str) -> float:
    """A sample of the server's /metrics, by the start of its line."""
    text = stack.client.get(f"{stack.server.url}/metrics").text
    [line] = [line for line in text.splitlines() if line.startswith(line_start)]
    return float(line.rsplit(" ", 1)[1])


class TestDailyTokenBudget:
    def test_a_spent_budget_sends_the_busy_message_once_per_conversation(self, stack):
        busy = 'replies_total{channel="sms",outcome="busy"}'
        busy_before = metric(stack, f"platica_{busy}")
        stack.configure(daily_token_budget=1, busy_message="Hoy no podemos responder más.")
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 1, "the AI's reply")
        assert metric(stack, "platica_budgets_spent") == 1

        stack.send(body="¿Sigues ahí?")
        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 2, "the busy message")
        stack.send(body="¿Hola?")
        stack.send(sender="+34600999888", body="Buenas")
        wait_for(lambda: stack.settled() and len(stack.inbound_states()) == 4, "settled")

        assert [(m["to"], m["body"]) for m in stack.twilio.sent] == [
            (CONTACT, "Echo: Hola"),
            (CONTACT, "Hoy no podemos responder más."),
            ("+34600999888", "Hoy no podemos responder más."),
        ]
        assert len(stack.openai.requests) == 1
        rows = stack.database.rows(
            "SELECT reply_state, note FROM messages WHERE direction = 'inbound' ORDER BY id"
        )
        assert [tuple(r) for r in rows] == [
            ("answered", None),
            ("answered", "daily token budget spent: busy message sent"),
            ("skipped", "daily token budget spent: busy message sent earlier today"),
            ("answered", "daily token budget spent: busy message sent"),
        ]
        assert metric(stack, f"platica_{busy}") - busy_before == 2

    def test_tokens_are_counted_per_day_only_under_a_budget(self, stack):
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the first reply")
        assert stack.database.scalar("SELECT max(tokens_used) FROM channel_configs") == 0

        stack.configure(daily_token_budget=100_000)
        stack.send(body="Otra pregunta")
        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 2, "the second reply")
        [row] = stack.database.rows(
            "SELECT tokens_used, tokens_day FROM channel_configs WHERE channel = 'sms'"
        )
        request = stack.openai.requests[-1]
        assert row.tokens_used > len(request["messages"])
        assert str(row.tokens_day) == str(datetime.now(UTC).date())
