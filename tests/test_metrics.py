"""GET /metrics over real HTTP: reply outcomes, LLM and Twilio latency, tokens, media items,
transcription time and audio seconds, and the number of messages waiting for a reply."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from platica.metrics import MEDIA_KINDS, MEDIA_OUTCOMES
from tests.media.samples import ogg_opus, png
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


class TestMediaMetrics:
    def test_items_by_kind_and_outcome_transcription_time_and_audio_seconds(self, stack):
        note = ogg_opus(5.0)
        stack.openai.transcribe_as(note, "Hola, ¿abren mañana?")
        items = [
            (note, "audio/ogg"),
            (png(32, 32), "image/png"),
            (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\nthis is no PDF", "application/pdf"),
        ]
        before = Scrape(stack)

        # As WhatsApp sends them: one item per message.
        for content, content_type in items:
            url = stack.twilio.add_media(content, content_type)
            stack.send(
                "whatsapp", body="", NumMedia="1", MediaUrl0=url, MediaContentType0=content_type
            )
        stack.send("whatsapp", body="", Latitude="40.416775", Longitude="-3.703790")
        wait_for(
            lambda: (
                stack.settled()
                and stack.database.scalar(
                    "SELECT count(*) FROM media WHERE state IN ('pending', 'fetched')"
                )
                == 0
                and stack.twilio.sent
            ),
            "the items read and the reply sent",
        )
        after = Scrape(stack)

        moved = {
            (kind, outcome): after("platica_media_items_total", kind=kind, outcome=outcome)
            - before("platica_media_items_total", kind=kind, outcome=outcome)
            for kind in MEDIA_KINDS
            for outcome in MEDIA_OUTCOMES
        }
        assert {key: n for key, n in moved.items() if n} == {
            ("audio", "understood"): 1,
            ("image", "understood"): 1,
            ("document", "failed"): 1,
            ("location", "understood"): 1,
        }
        histogram = "platica_transcription_seconds"
        assert after(f"{histogram}_count") - before(f"{histogram}_count") == 1
        assert after(f"{histogram}_sum") > before(f"{histogram}_sum")
        assert after(f"{histogram}_bucket", le="+Inf") == after(f"{histogram}_count")
        audio = after("platica_audio_seconds_total") - before("platica_audio_seconds_total")
        assert audio == pytest.approx(5.0, abs=0.05)


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
