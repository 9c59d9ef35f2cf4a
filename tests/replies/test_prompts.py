"""The context sent to the LLM: system prompt, channel instructions and the recent history."""

from __future__ import annotations

from typing import Any

from platica.media.store import Attachment, Picture
from platica.models import Channel, ChannelConfig, Direction
from platica.replies.generator import ChatMessage
from platica.replies.prompts import Said, build_messages, describe, estimate_tokens
from tests.media.samples import png

PROMPT = "Eres el asistente de la Panadería Sol."


def config(channel: Channel = Channel.sms, **overrides: Any) -> ChannelConfig:
    values: dict[str, Any] = {
        "channel": channel,
        "phone_number": "+15005550006",
        "system_prompt": f"  {PROMPT}\n",
        "sms_max_chars": 320,
    }
    values.update(overrides)
    return ChannelConfig(**values)


def inbound(body: str = "", **overrides: Any) -> Said:
    return Said(Direction.inbound, body, **overrides)


def outbound(body: str) -> Said:
    return Said(Direction.outbound, body)


def item(kind: str, content_type: str = "", state: str = "understood", text: str | None = None):
    return Attachment(1, kind, content_type, state, text)


class TestBuildMessages:
    def test_sms_system_prompt_names_the_limit_and_forbids_markdown(self):
        system, *_ = build_messages(config(Channel.sms, sms_max_chars=320), [inbound("Hola")])

        assert system.role == "system"
        assert system.text.startswith(PROMPT + "\n\n")
        assert "SMS" in system.content
        assert "320 characters" in system.content
        assert "no Markdown" in system.content

    def test_whatsapp_system_prompt_names_whatsapps_limit(self):
        system, *_ = build_messages(config(Channel.whatsapp), [inbound("Hola")])

        assert system.text.startswith(PROMPT + "\n\n")
        assert "WhatsApp" in system.content
        assert "1600 characters" in system.content
        assert "320" not in system.content

    def test_history_follows_oldest_first_with_roles(self):
        history = [
            inbound("Hola"),
            outbound("¡Hola! ¿En qué te ayudo?"),
            inbound("¿Abrís el domingo?"),
        ]

        _system, *rest = build_messages(config(), history)

        assert rest == [
            ChatMessage("user", "Hola"),
            ChatMessage("assistant", "¡Hola! ¿En qué te ayudo?"),
            ChatMessage("user", "¿Abrís el domingo?"),
        ]

    def test_only_the_newest_messages_within_the_budget_are_kept(self):
        # 30 characters cost 30 // 3 + 4 = 14 tokens: two fit in 30, three do not.
        history = [inbound(f"message number {i} " + "x" * 13) for i in range(5)]
        assert all(estimate_tokens(m.body) == 14 for m in history)

        _system, *rest = build_messages(config(), history, budget=30)

        assert [m.content for m in rest] == [history[3].body, history[4].body]

    def test_an_older_message_does_not_squeeze_in_after_one_that_did_not_fit(self):
        history = [inbound("short"), inbound("y" * 90), inbound("z" * 30)]

        _system, *rest = build_messages(config(), history, budget=30)

        # "short" would fit the remaining budget, but history must stay contiguous.
        assert [m.content for m in rest] == ["z" * 30]

    def test_an_over_budget_newest_message_is_truncated_not_dropped(self):
        question = "¿y el domingo?"
        long = "a" * 500 + question
        history = [inbound("Hola"), inbound(long)]

        _system, *rest = build_messages(config(), history, budget=20)

        [kept] = rest
        assert kept.role == "user"
        assert len(kept.content) == 60
        # The end is kept: that is where the question usually is.
        assert kept.text.endswith(question)
        assert long.endswith(kept.text)

    def test_media_is_described_before_the_caption(self):
        history = [
            inbound("Mira esto", media=[item("image", "image/jpeg")]),
            inbound(media=[item("audio", "audio/ogg", text="Hola, ¿tienen pan integral?")]),
        ]

        _system, *rest = build_messages(config(), history)

        assert [m.content for m in rest] == [
            "[image (you cannot see it)]\nMira esto",
            "[voice note] Hola, ¿tienen pan integral?",
        ]
        assert [m.media for m in rest] == [("image",), ("audio",)]

    def test_the_system_prompt_says_how_media_arrive(self):
        system, *_ = build_messages(config(), [inbound("Hola")])

        assert "[voice note]" in system.text
        assert "could not be opened" in system.text

    def test_images_with_their_bytes_go_as_image_parts(self):
        picture = Picture(1, "image/png", png(8, 8))
        history = [
            inbound("Hola"),
            inbound(
                "¿Se ve bien la pieza?", media=[item("image", "image/png")], pictures=[picture]
            ),
        ]

        _system, _first, last = build_messages(config(), history)

        assert last.role == "user"
        assert isinstance(last.content, list)
        text, image = last.content
        assert text == {"type": "text", "text": "[image, shown below]\n¿Se ve bien la pieza?"}
        assert image["type"] == "image_url"
        assert image["image_url"]["url"].startswith("data:image/png;base64,")

    def test_an_image_that_cannot_be_opened_is_left_out(self):
        picture = Picture(1, "image/png", b"not an image")
        history = [inbound("Mira", media=[item("image", "image/png")], pictures=[picture])]

        _system, last = build_messages(config(), history)

        assert last.content == "[image (you cannot see it)]\nMira"

    def test_empty_history_is_just_the_system_prompt(self):
        messages = build_messages(config(), [])

        assert [m.role for m in messages] == ["system"]


class TestDescribe:
    def test_media_without_a_type_is_a_file(self):
        assert describe(inbound(media=[item("other", state="failed")])) == (
            "[file attachment that cannot be opened]"
        )

    def test_each_kind_and_state_in_words(self):
        cases = [
            (item("audio", "audio/ogg", "failed"), "[voice note that could not be transcribed]"),
            (item("image", "image/jpeg", "failed"), "[image that could not be opened]"),
            (
                item("document", "application/pdf", text="Factura 1234 — Total: 560 MXN"),
                "[document (pdf)]\nFactura 1234 — Total: 560 MXN",
            ),
            (
                item("document", "application/msword", "failed"),
                "[document (msword) that could not be opened]",
            ),
            (
                item("location", text="location: 19.432608, -99.133209, Zócalo"),
                "[location: 19.432608, -99.133209, Zócalo]",
            ),
            (item("other", "video/mp4", "failed"), "[video/mp4 attachment that cannot be opened]"),
        ]
        for attachment, words in cases:
            assert describe(inbound(media=[attachment])) == words

    def test_a_message_with_nothing_is_named_empty(self):
        assert describe(inbound("")) == "[empty message]"
