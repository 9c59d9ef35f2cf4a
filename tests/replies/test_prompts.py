"""The context sent to the LLM: system prompt, channel instructions and the recent history."""

from __future__ import annotations

from typing import Any

from platica.models import Author, Channel, ChannelConfig, Direction, Message
from platica.replies.generator import ChatMessage
from platica.replies.prompts import build_messages, describe, estimate_tokens

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


def inbound(body: str = "", **overrides: Any) -> Message:
    return Message(direction=Direction.inbound, author=Author.contact, body=body, **overrides)


def outbound(body: str) -> Message:
    return Message(direction=Direction.outbound, author=Author.ai, body=body)


class TestBuildMessages:
    def test_sms_system_prompt_names_the_limit_and_forbids_markdown(self):
        system, *_ = build_messages(config(Channel.sms, sms_max_chars=320), [inbound("Hola")])

        assert system.role == "system"
        assert system.content.startswith(PROMPT + "\n\n")
        assert "SMS" in system.content
        assert "320 characters" in system.content
        assert "no Markdown" in system.content

    def test_whatsapp_system_prompt_names_whatsapps_limit(self):
        system, *_ = build_messages(config(Channel.whatsapp), [inbound("Hola")])

        assert system.content.startswith(PROMPT + "\n\n")
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
        assert kept.content.endswith(question)
        assert long.endswith(kept.content)

    def test_media_is_described(self):
        history = [
            inbound("Mira esto", media=[{"url": "https://x/1", "content_type": "image/jpeg"}]),
            inbound(media=[{"url": "https://x/2", "content_type": "audio/ogg"}]),
        ]

        _system, *rest = build_messages(config(), history)

        assert [m.content for m in rest] == ["Mira esto [image attached]", "[audio attached]"]

    def test_empty_history_is_just_the_system_prompt(self):
        messages = build_messages(config(), [])

        assert [m.role for m in messages] == ["system"]


class TestDescribe:
    def test_media_without_a_type_is_a_file(self):
        message = inbound(media=[{"url": "https://x/1"}])

        assert describe(message) == "[file attached]"

    def test_a_message_with_nothing_is_named_empty(self):
        assert describe(inbound("")) == "[empty message]"
