"""A model's reply shaped for its channel: plain text for SMS, WhatsApp formatting for WhatsApp.

Pure functions, no I/O. SMS replies lose their Markdown, are cut on a word boundary to the
account's `sms_max_chars`, and carry their encoding (GSM-7 or UCS-2) and segment count. WhatsApp
replies get WhatsApp's own formatting (*bold*, _italic_, ~strike~) and are split into ordered
parts of at most 1,600 characters, Twilio's limit for one message body. The Markdown is
converted by markdown.py, the encoding counted by platica/sms.py.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from platica.replies.markdown import (
    fence_spans,
    join_lines,
    markdown_to_plain,
    markdown_to_whatsapp,
    normalise_newlines,
)
from platica.sms import sms_encoding, utf16_length

WHATSAPP_LIMIT = 1600


@dataclass(frozen=True)
class SmsText:
    text: str
    encoding: str  # "GSM-7" or "UCS-2"
    segments: int


# ---------------------------------------------------------------------------------------------
# SMS

_DANGLING = " \t\n,;:-\u2013\u2014/&([{\u00b7\u2022"  # dashes, middle dot, bullet


def shape_sms(text: str, max_chars: int) -> SmsText:
    """A reply as one SMS: plain text of at most `max_chars` characters, with its encoding.

    Markdown is removed and whitespace runs within lines collapsed. A longer text is cut at the
    last whitespace at or before `max_chars` (a hard cut when there is none in the second
    half), then loses trailing whitespace and dangling punctuation. Never empty when `text`
    has any non-whitespace character.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, not {max_chars}")
    plain = _collapse_spaces(markdown_to_plain(text)) or _collapse_spaces(text)
    if len(plain) > max_chars:
        plain = _cut_on_word(plain, max_chars)
    encoding, segments = sms_encoding(plain)
    return SmsText(text=plain, encoding=encoding, segments=segments)


def _collapse_spaces(text: str) -> str:
    lines = [" ".join(line.split()) for line in normalise_newlines(text).split("\n")]
    return join_lines(lines)


def _cut_on_word(text: str, max_chars: int) -> str:
    space = next((i for i in range(max_chars, -1, -1) if text[i].isspace()), -1)
    if space >= max_chars / 2:
        cut = text[:space].rstrip(_DANGLING)
        if cut:
            return cut
    hard = text[: _grapheme_safe(text, 0, max_chars)]
    return hard.rstrip(_DANGLING) or hard.rstrip() or hard


def _grapheme_safe(text: str, start: int, cut: int) -> int:
    """Move a hard cut back so it does not split an emoji sequence or a combining mark."""
    candidate = cut
    while candidate - 1 > start and candidate < len(text):
        if not (_extends(text[candidate]) or text[candidate - 1] == "\u200d"):
            return candidate
        candidate -= 1
    return cut if candidate - 1 <= start else candidate


def _extends(char: str) -> bool:
    """True for a character that belongs to the one before it (a mark, a ZWJ, a modifier)."""
    code = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Me", "Mc")
        or code in (0x200D, 0xFE0E, 0xFE0F, 0x20E3)
        or 0x1F3FB <= code <= 0x1F3FF  # skin tones
        or 0xE0020 <= code <= 0xE007F  # tag characters (subdivision flags)
    )


# ---------------------------------------------------------------------------------------------
# WhatsApp

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_LINE_BREAK = re.compile(r"\n\s*")
# A sentence end, with any closing quotes or brackets; CJK full stops need no space after.
_CLOSERS = "\"'\u201d\u2019\u00bb)\\]\u300d\u300f"
_SENTENCE_END = re.compile(f"[.!?\u2026][{_CLOSERS}]*(?=\\s)|[\u3002\uff01\uff1f][{_CLOSERS}]*")
_WHITESPACE = re.compile(r"\s+")

_Finder = Callable[[re.Match[str]], tuple[int, int]]
_LEVELS: tuple[tuple[re.Pattern[str], _Finder], ...] = (
    (_PARAGRAPH_BREAK, lambda m: (m.start(), m.end())),
    (_LINE_BREAK, lambda m: (m.start(), m.end())),
    (_SENTENCE_END, lambda m: (m.end(), m.end())),
    (_WHITESPACE, lambda m: (m.start(), m.end())),
)


def shape_whatsapp(text: str, limit: int = WHATSAPP_LIMIT) -> list[str]:
    """A reply as WhatsApp messages: Markdown converted, then split to fit `limit`."""
    return split_whatsapp(markdown_to_whatsapp(text), limit)


def split_whatsapp(text: str, limit: int = WHATSAPP_LIMIT) -> list[str]:
    """`text` as ordered parts of at most `limit` characters each, to send one after another.

    Length is counted in UTF-16 code units, so an emoji counts as two: a part is within the
    limit whichever way Twilio counts. A text that fits is one part. A longer one is cut at the
    last paragraph break, else line break, else sentence end, else whitespace in the second
    half of the allowance (or, failing all, the last such boundary anywhere), else hard. A
    fenced code block that fits in one part is never cut. Parts are stripped and non-empty;
    only whitespace is lost at the cuts. Blank text gives no parts.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    text = text.strip()
    fences = [(a, b) for a, b in fence_spans(text) if utf16_length(text[a:b]) <= limit]
    parts: list[str] = []
    start = 0
    while start < len(text):
        # At least one character per part, even an emoji with a limit of one.
        end = max(_fit(text, start, limit), start + 1)
        if end == len(text):
            parts.append(text[start:].strip())
            break
        cut, resume = _split_point(text, start, end, fences)
        parts.append(text[start:cut].rstrip())
        start = resume
        while start < len(text) and text[start].isspace():
            start += 1
    return parts


def _fit(text: str, start: int, limit: int) -> int:
    """The largest end such that text[start:end] is at most `limit` UTF-16 code units."""
    units = 0
    for index in range(start, len(text)):
        units += 2 if ord(text[index]) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)


def _split_point(text: str, start: int, end: int, fences: list[tuple[int, int]]) -> tuple[int, int]:
    """Where to end the part that starts at `start` and may run to `end`, and where to resume."""

    def allowed(cut: int) -> bool:
        return start < cut <= end and not any(a < cut < b for a, b in fences)

    half = start + (end - start) // 2
    candidates: list[tuple[int, int] | None] = []
    for pattern, finder in _LEVELS:
        last: tuple[int, int] | None = None
        for match in pattern.finditer(text, start):
            if match.start() > end:
                break
            cut, resume = finder(match)
            if allowed(cut):
                last = (cut, max(resume, cut))
        if last is not None and last[0] >= half:
            return last
        candidates.append(last)
    for candidate in candidates:
        if candidate is not None:
            return candidate
    cut = _grapheme_safe(text, start, end)
    return cut, cut
