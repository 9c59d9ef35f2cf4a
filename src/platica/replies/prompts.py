"""The context sent to the LLM: the account's system prompt and the conversation's recent messages."""

from __future__ import annotations

from collections.abc import Sequence

from platica.models import ChannelConfig, Direction, Message
from platica.replies.generator import ChatMessage

# Prompt tokens spent on history at most; the newest messages are kept first.
HISTORY_TOKEN_BUDGET = 3000
WHATSAPP_LIMIT = 1600


def estimate_tokens(text: str) -> int:
    """About four characters a token for English and Spanish; a little over, to be safe."""
    return len(text) // 3 + 4


def channel_instructions(config: ChannelConfig) -> str:
    if config.channel == "sms":
        return (
            f"You are replying by SMS: plain text only, no Markdown, at most "
            f"{config.sms_max_chars} characters."
        )
    return (
        "You are replying on WhatsApp: keep it conversational and under "
        f"{WHATSAPP_LIMIT} characters; *bold* and _italic_ are fine, no tables or headings."
    )


def describe(message: Message) -> str:
    """A message as the model should read it: its text, and any attachments named."""
    parts = [message.body] if message.body else []
    for item in message.media or []:
        kind = (item.get("content_type") or "file").split("/")[0]
        parts.append(f"[{kind} attached]")
    return " ".join(parts) or "[empty message]"


def build_messages(
    config: ChannelConfig,
    history: Sequence[Message],
    *,
    budget: int = HISTORY_TOKEN_BUDGET,
) -> list[ChatMessage]:
    """System prompt, then the newest history (oldest first) that fits in `budget` tokens."""
    system = ChatMessage(
        "system", f"{config.system_prompt.strip()}\n\n{channel_instructions(config)}"
    )
    kept: list[ChatMessage] = []
    spent = 0
    for message in reversed(history):
        content = describe(message)
        cost = estimate_tokens(content)
        if kept and spent + cost > budget:
            break
        if not kept and cost > budget:
            # The newest message alone is over budget: keep its end, where the question usually is.
            content = content[-budget * 3 :]
            cost = budget
        inbound = message.direction == Direction.inbound
        kept.append(ChatMessage("user" if inbound else "assistant", content))
        spent += cost
    kept.reverse()
    return [system, *kept]
