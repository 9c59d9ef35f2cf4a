"""GET /metrics over real HTTP: reply outcomes, LLM and Twilio latency, tokens, and the number of
messages waiting for a reply."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.polling import wait_for
from tests.stack import Stack, live_stack


@pytest.fixture
def stack(database_url, live_server) -> Iterator[Stack]:
    with live_stack(database_url, live_server) as created:
        yield created


class Scrape:
    """One read of /metrics."""

    def __init__(self, stack: Stack) -> None:
        response = stack.client.get(f"{stack.server.url}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        self.samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)


def replies(scrape: Scrape, outcome: str, channel: str = "sms") -> float:
    return scrape("platica_replies_total", channel=channel, outcome=outcome)


class TestReplyMetrics:
    def test_an_ai_reply_moves_the_counters_and_histograms(self, stack):
        before = Scrape(stack)

        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the reply")
        after = Scrape(stack)

        assert replies(after, "ai") - replies(before, "ai") == 1
        assert replies(after, "fallback") == replies(before, "fallback")
        for histogram in ("platica_llm_seconds", "platica_twilio_seconds"):
            assert after(f"{histogram}_count") - before(f"{histogram}_count") == 1
            assert after(f"{histogram}_sum") > before(f"{histogram}_sum")
            assert after(f"{histogram}_bucket", le="+Inf") == after(f"{histogram}_count")
        [reply] = stack.outbound()
        for kind, used in (
            ("prompt", reply.prompt_tokens),
            ("completion", reply.completion_tokens),
        ):
            moved = after("platica_llm_tokens_total", kind=kind) - before(
                "platica_llm_tokens_total", kind=kind
            )
            assert moved == used > 0

    def test_every_outcome_is_there_from_the_start(self, stack):
        scrape = Scrape(stack)

        for channel in ("whatsapp", "sms"):
            for outcome in ("ai", "fallback", "busy", "keyword", "skipped", "flood", "send_failed"):
                key = (
                    "platica_replies_total",
                    (("channel", channel), ("outcome", outcome)),
                )
                assert key in scrape.samples

    def test_fallback_keyword_skipped_and_send_failed(self, stack):
        before = Scrape(stack)

        stack.send("whatsapp", body="HELP")
        wait_for(lambda: stack.settled() and stack.twilio.sent, "the help message")
        stack.openai.fail_always("quota")
        stack.twilio.fail_next("21610")
        stack.send(body="Hola")
        wait_for(lambda: stack.settled() and len(stack.inbound_states()) == 2, "the fallback")
        stack.database.execute("UPDATE conversations SET ai_enabled = false")
        stack.send(body="¿Hay alguien?")
        wait_for(lambda: stack.settled() and len(stack.inbound_states()) == 3, "settled")
        after = Scrape(stack)

        assert replies(after, "keyword", "whatsapp") - replies(before, "keyword", "whatsapp") == 1
        assert replies(after, "fallback") - replies(before, "fallback") == 1
        assert replies(after, "send_failed") - replies(before, "send_failed") == 1
        # The 21610 opted the contact out, so the last message is skipped.
        assert replies(after, "skipped") - replies(before, "skipped") == 1
        assert replies(after, "ai") == replies(before, "ai")


class TestPendingReplies:
    def test_counts_messages_waiting_for_their_reply(self, stack):
        stack.send(body="uno")
        stack.send(body="dos", sender="+34600999888")
        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 2, "the replies")
        assert Scrape(stack)("platica_pending_replies") == 0

        # Back to waiting, as if a worker had yet to get to them. (Not with a long debounce: on
        # PostgreSQL its delayed jobs would outlive the test, in the database the tests share.)
        stack.database.execute(
            "UPDATE messages SET reply_state = 'pending' WHERE direction = 'inbound'"
        )

        assert Scrape(stack)("platica_pending_replies") == 2
        stack.database.execute(
            "UPDATE messages SET reply_state = 'answered' WHERE direction = 'inbound'"
        )
        assert Scrape(stack)("platica_pending_replies") == 0


class TestParkedConversations:
    def test_counts_parked_conversations(self, stack):
        stack.send(body="uno")
        stack.send(body="dos", sender="+34600999888")
        wait_for(lambda: stack.settled() and len(stack.twilio.sent) == 2, "the replies")
        assert Scrape(stack)("platica_parked_conversations") == 0

        stack.database.execute(
            "UPDATE conversations SET parked_at = created_at, parked_error = 'boom',"
            " crash_count = 5"
        )

        assert Scrape(stack)("platica_parked_conversations") == 2
