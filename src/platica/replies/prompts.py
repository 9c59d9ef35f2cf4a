"""The context sent to the LLM: the account's system prompt and the conversation's recent messages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from platica.media.kinds import bare_type
from platica.media.store import Attachment, Picture
from platica.media.understand import UnderstandFailed, image_data_url
from platica.models import ChannelConfig, Direction, MediaKind, MediaState
from platica.replies.generator import ChatMessage
from platica.texts import text_for

# Prompt tokens spent on history at most; the newest messages are kept first.
HISTORY_TOKEN_BUDGET = 3000
WHATSAPP_LIMIT = 1600
# What an image costs the prompt, about (a high-detail tile or two).
IMAGE_TOKENS = 800
MEDIA_INSTRUCTIONS = (
    "Customers may send voice notes (you get their transcript after [voice note]), images, "
    "documents and locations. When one could not be opened or understood, say so kindly and "
    "ask them to write what they need."
)


@dataclass(frozen=True, slots=True)
class Said:
    """A message of the conversation as the model is shown it."""

    direction: Direction
    body: str
    media: Sequence[Attachment] = ()
    # The bytes of its images, for a model that sees images (the batch being answered only).
    pictures: Sequence[Picture] = ()


def estimate_tokens(text: str) -> int:
    """About four characters a token for English and Spanish; a little over, to be safe."""
    return len(text) // 3 + 4


def channel_instructions(config: ChannelConfig) -> str:
    if config.channel == "sms":
        channel = (
            f"You are replying by SMS: plain text only, no Markdown, at most "
            f"{config.sms_max_chars} characters."
        )
    else:
        channel = (
            "You are replying on WhatsApp: keep it conversational and under "
            f"{WHATSAPP_LIMIT} characters; *bold* and _italic_ are fine, no tables or headings."
        )
    return f"{channel}\n{MEDIA_INSTRUCTIONS}"


def _what(item: Attachment, *, shown: bool) -> str:
    """One media item in words: what arrived, and what was understood of it."""
    kind = item.kind
    understood = item.state == MediaState.understood
    if kind == MediaKind.location:
        return f"[{item.text}]"
    if kind == MediaKind.audio:
        if understood and item.text:
            return f"[voice note] {item.text}"
        if item.state == MediaState.pending:
            return "[voice note]"
        return "[voice note that could not be transcribed]"
    if kind == MediaKind.image:
        if shown:
            return "[image, shown below]"
        if item.state == MediaState.failed:
            return "[image that could not be opened]"
        return "[image (you cannot see it)]"
    if kind == MediaKind.document:
        name = bare_type(item.content_type).rpartition("/")[2] or "file"
        if understood and item.text:
            return f"[document ({name})]\n{item.text}"
        return f"[document ({name}) that could not be opened]"
    what = bare_type(item.content_type) or "file"
    return f"[{what} attachment that cannot be opened]"


def describe(said: Said, *, shown: bool = False) -> str:
    """A message as the model should read it: its text, and its media in words."""
    parts = [_what(item, shown=shown) for item in said.media]
    if said.body:
        parts.append(said.body)
    return "\n".join(parts) or "[empty message]"


def _images(said: Said) -> list[dict[str, Any]]:
    """The message's images as content parts; those that cannot be opened are left out."""
    parts: list[dict[str, Any]] = []
    for picture in said.pictures:
        try:
            url = image_data_url(picture.content, picture.content_type)
        except UnderstandFailed:
            continue
        parts.append({"type": "image_url", "image_url": {"url": url, "detail": "auto"}})
    return parts


def build_messages(
    config: ChannelConfig,
    history: Sequence[Said],
    *,
    budget: int = HISTORY_TOKEN_BUDGET,
) -> list[ChatMessage]:
    """System prompt, then the newest history (oldest first) that fits in `budget` tokens.
    Images go as image parts where the history carries their bytes (the batch being answered,
    with `vision` on)."""
    system = ChatMessage(
        "system",
        f"{text_for(config, 'system_prompt').strip()}\n\n{channel_instructions(config)}",
    )
    kept: list[ChatMessage] = []
    spent = 0
    for said in reversed(history):
        images = _images(said) if said.pictures else []
        content = describe(said, shown=bool(images))
        cost = estimate_tokens(content) + IMAGE_TOKENS * len(images)
        if kept and spent + cost > budget:
            break
        if not kept and cost > budget:
            # The newest message alone is over budget: keep its end, where the question usually is.
            content = content[-budget * 3 :]
            cost = budget
        inbound = said.direction == Direction.inbound
        kinds = tuple(item.kind for item in said.media)
        if images:
            parts = [{"type": "text", "text": content}, *images]
            kept.append(ChatMessage("user", parts, kinds))
        else:
            kept.append(ChatMessage("user" if inbound else "assistant", content, kinds))
        spent += cost
    kept.reverse()
    return [system, *kept]
