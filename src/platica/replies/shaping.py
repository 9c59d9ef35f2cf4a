"""A model's reply shaped for its channel: plain text for SMS, WhatsApp formatting for WhatsApp.

Pure functions, no I/O. SMS replies lose their Markdown, are cut on a word boundary to the
account's `sms_max_chars`, and carry their encoding (GSM-7 or UCS-2) and segment count. WhatsApp
replies get WhatsApp's own formatting (*bold*, _italic_, ~strike~) and are split into ordered
parts of at most 1,600 characters, Twilio's limit for one message body.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from platica.sms import sms_encoding, utf16_length

WHATSAPP_LIMIT = 1600


@dataclass(frozen=True)
class SmsText:
    text: str
    encoding: str  # "GSM-7" or "UCS-2"
    segments: int


# ---------------------------------------------------------------------------------------------
# Markdown, line by line

_FENCE_OPEN = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_RULE = re.compile(r"^[ \t]{0,3}(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:_[ \t]*){3,}|={3,}[ \t]*)$")
_HEADER = re.compile(r"^[ \t]{0,3}#{1,6}(?:[ \t]+(?P<text>.*?))?(?:[ \t]+#+)?[ \t]*$")
_QUOTE = re.compile(r"^[ \t]{0,3}>[ \t]?")
_BULLET = re.compile(r"^(?P<indent>[ \t]*)[-*+][ \t]+(?P<text>.*)$")
_BLANK_RUNS = re.compile(r"\n{3,}")


class _Style(NamedTuple):
    """Markers that wrap bold, italic and struck-through text in the output."""

    bold: str
    italic: str
    strike: str
    keep_code_spans: bool  # keep `code` with its backticks, or just its text


_PLAIN = _Style(bold="", italic="", strike="", keep_code_spans=False)
_WHATSAPP = _Style(bold="*", italic="_", strike="~", keep_code_spans=True)
# A WhatsApp header is bold as a whole; bold inside it would close the outer marker.
_WHATSAPP_HEADER = _Style(bold="", italic="_", strike="~", keep_code_spans=True)


def _closes_fence(line: str, fence: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= len(fence) and set(stripped) == {fence[0]}


def _opens_fence(line: str) -> re.Match[str] | None:
    match = _FENCE_OPEN.match(line)
    # A backtick fence's info string cannot hold a backtick: "```x```" is inline code.
    if match is None or (match["fence"][0] == "`" and "`" in match["info"]):
        return None
    return match


class _Line(NamedTuple):
    kind: str  # "text", "code" (inside a fenced block) or "fence" (an opening or closing fence)
    text: str


def _lines(text: str) -> Iterator[_Line]:
    """The lines of `text`, each marked as ordinary text, fenced code, or a fence."""
    fence: str | None = None
    for line in text.split("\n"):
        if fence is not None:
            if _closes_fence(line, fence):
                fence = None
                yield _Line("fence", line)
            else:
                yield _Line("code", line)
        elif (match := _opens_fence(line)) is not None:
            fence = match["fence"]
            yield _Line("fence", line)
        else:
            yield _Line("text", line)


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace(_OPEN, "").replace(_CLOSE, "")


def _join_lines(lines: list[str]) -> str:
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def markdown_to_plain(text: str) -> str:
    """Markdown turned into plain text for SMS.

    Emphasis and strike-through markers go (underscores inside words such as snake_case and
    identifiers such as __init__ stay), `code` keeps its text, fenced blocks keep their
    content without the fences, "# X" becomes "X", [text](url) becomes "text (url)", an image
    becomes its URL, bullets become "- ", blockquote markers and horizontal rules go.
    """
    lines: list[str] = []
    for kind, line in _lines(_normalise_newlines(text)):
        if kind == "code":
            lines.append(line.rstrip())
        elif kind == "text":
            lines.append(_plain_line(line).rstrip())
    return _join_lines(lines)


def _plain_line(line: str) -> str:
    while (quote := _QUOTE.match(line)) is not None:
        line = line[quote.end() :]
    if _RULE.match(line):
        return ""
    if (header := _HEADER.match(line)) is not None:
        return _inline(header["text"] or "", _PLAIN)
    if (bullet := _BULLET.match(line)) is not None:
        return f"{bullet['indent']}- {_inline(bullet['text'], _PLAIN)}"
    return _inline(line, _PLAIN)


def markdown_to_whatsapp(text: str) -> str:
    """Markdown turned into WhatsApp formatting.

    **bold** and __bold__ become *bold*, *italic* and _italic_ become _italic_, ~~strike~~
    becomes ~strike~, headers become bold lines, [text](url) becomes "text (url)", an image
    becomes its URL and bullets become "• ". Fenced blocks and `code` are left as they are
    (WhatsApp shows both as monospace), except that a fence loses its language tag, which
    WhatsApp would print. snake_case and __init__ are not taken for emphasis.
    """
    lines: list[str] = []
    for kind, line in _lines(_normalise_newlines(text)):
        if kind == "fence":
            # WhatsApp knows ``` only, and would print a language tag.
            lines.append(line[: len(line) - len(line.lstrip())] + "```")
        elif kind == "code":
            lines.append(line.rstrip())
        elif (converted := _whatsapp_line(line).rstrip()) or (lines and lines[-1]):
            # At most one blank line in a row outside code blocks; code keeps its own.
            lines.append(converted)
    return "\n".join(lines).strip()


def _whatsapp_line(line: str) -> str:
    quoted = False
    while (quote := _QUOTE.match(line)) is not None:
        line, quoted = line[quote.end() :], True
    prefix = "> " if quoted else ""
    if _RULE.match(line):
        return prefix.rstrip()
    if (header := _HEADER.match(line)) is not None:
        title = _inline(header["text"] or "", _WHATSAPP_HEADER)
        return f"{prefix}*{title}*" if title else prefix.rstrip()
    if (bullet := _BULLET.match(line)) is not None:
        return f"{prefix}{bullet['indent']}• {_inline(bullet['text'], _WHATSAPP)}"
    return prefix + _inline(line, _WHATSAPP)


# ---------------------------------------------------------------------------------------------
# Markdown, inside a line

# Text that must come through untouched (code, URLs, escaped characters) is swapped out for a
# placeholder while emphasis is converted, then put back.
_OPEN, _CLOSE = "\x00", "\x01"
_PLACEHOLDER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")

_CODE_SPAN = re.compile(r"(?<!`)(?P<ticks>`+)(?!`)(?P<code>.+?)(?<!`)(?P=ticks)(?!`)")
_ESCAPE = re.compile(r"\\(?P<char>[\\`*_{}\[\]()#+\-.!~>|])")
_URL = r"(?P<url>[^\s()<>]*(?:\([^\s()<>]*\)[^\s()<>]*)*)"
_TITLE = r"""(?:[ \t]+(?:"[^"]*"|'[^']*'))?"""
_IMAGE = re.compile(rf"!\[(?P<alt>[^\]]*)\]\([ \t]*<?{_URL}>?{_TITLE}[ \t]*\)")
_LINK = re.compile(rf"\[(?P<text>[^\]]+)\]\([ \t]*<?{_URL}>?{_TITLE}[ \t]*\)")
_AUTOLINK = re.compile(r"<(?P<url>(?:https?|mailto|tel):[^\s<>]+)>")
_BARE_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>()]*(?:\([^\s<>()]*\)[^\s<>()]*)*")
_URL_TRAILING = ".,;:!?'\""

# Python's special names, which a model writes outside backticks and Markdown would take for
# __bold__. A standalone "__bold__" is still bold.
_DUNDERS = frozenset(
    [
        "init",
        "new",
        "del",
        "repr",
        "str",
        "bytes",
        "format",
        "hash",
        "bool",
        "call",
        "len",
        "iter",
        "next",
        "enter",
        "exit",
        "aenter",
        "aexit",
        "getattr",
        "getattribute",
        "setattr",
        "delattr",
        "getitem",
        "setitem",
        "delitem",
        "contains",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "pow",
        "and",
        "or",
        "xor",
        "name",
        "main",
        "file",
        "doc",
        "dict",
        "class",
        "module",
        "slots",
        "all",
        "version",
        "author",
        "package",
        "path",
        "spec",
        "loader",
        "builtins",
        "annotations",
        "future",
        "post_init",
        "init_subclass",
        "class_getitem",
        "await",
        "aiter",
        "anext",
        "missing",
        "reduce",
        "getstate",
        "setstate",
    ]
)

# Emphasis in one pass, so a converted marker is never read again as another. Alternatives are
# tried in order at each position: ***x***, **x**, __x__, ~~x~~, *x*, _x_. Markers must hug the
# text (no space just inside), and underscores and single asterisks must not touch a letter or
# digit outside, which leaves snake_case, 2*3*4 and obj.__class__ alone.
_EMPHASIS = re.compile(
    r"(?P<bi>\*\*\*(?=[^\s*])(?P<bi_t>.+?)(?<=[^\s*])\*\*\*(?!\*))"
    r"|(?P<b>\*\*(?=[^\s*])(?P<b_t>.+?)(?<=[^\s*])\*\*(?!\*))"
    r"|(?P<ub>(?<![\w.])__(?=[^\s_])(?P<ub_t>.+?)(?<=[^\s_])__(?![\w(]|\.\w))"
    r"|(?P<s>~~(?=[^\s~])(?P<s_t>.+?)(?<=[^\s~])~~(?!~))"
    r"|(?P<i>(?<![\w*])\*(?=[^\s*])(?P<i_t>.+?)(?<=[^\s*])\*(?![\w*]))"
    r"|(?P<ui>(?<![\w])_(?=[^\s_])(?P<ui_t>.+?)(?<=[^\s_])_(?!\w))"
)


class _Stash:
    def __init__(self) -> None:
        self.items: list[str] = []

    def put(self, text: str) -> str:
        self.items.append(text)
        return f"{_OPEN}{len(self.items) - 1}{_CLOSE}"

    def restore(self, text: str) -> str:
        while _PLACEHOLDER.search(text):
            text = _PLACEHOLDER.sub(lambda m: self.items[int(m[1])], text)
        return text


def _inline(text: str, style: _Style) -> str:
    stash = _Stash()

    def code(match: re.Match[str]) -> str:
        if style.keep_code_spans:
            return stash.put(match[0])
        content = match["code"]
        if len(content) > 2 and content.startswith(" ") and content.endswith(" "):
            content = content[1:-1]
        return stash.put(content)

    def link(match: re.Match[str]) -> str:
        url, label = match["url"], match["text"].strip()
        if not url:
            return label
        bare = re.sub(r"^(?:mailto|tel):", "", url)
        if label in (url, bare):
            return stash.put(url)
        return f"{label} ({stash.put(url)})"

    def bare_url(match: re.Match[str]) -> str:
        url = match[0].rstrip(_URL_TRAILING)
        return stash.put(url) + match[0][len(url) :]

    text = _CODE_SPAN.sub(code, text)
    text = _ESCAPE.sub(lambda m: stash.put(m["char"]), text)
    text = _IMAGE.sub(lambda m: stash.put(m["url"]) if m["url"] else m["alt"], text)
    text = _LINK.sub(link, text)
    text = _AUTOLINK.sub(lambda m: stash.put(m["url"]), text)
    text = _BARE_URL.sub(bare_url, text)
    text = _emphasis(text, style)
    return stash.restore(text)


def _emphasis(text: str, style: _Style) -> str:
    def convert(match: re.Match[str]) -> str:
        kind = match.lastgroup
        if kind == "bi":
            inner = _emphasis(match["bi_t"], style)
            return f"{style.bold}{style.italic}{inner}{style.italic}{style.bold}"
        if kind == "ub" and match["ub_t"] in _DUNDERS:
            return match[0]
        marker = {"b": style.bold, "ub": style.bold, "s": style.strike}.get(
            kind or "", style.italic
        )
        return f"{marker}{_emphasis(match[f'{kind}_t'], style)}{marker}"

    return _EMPHASIS.sub(convert, text)


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
    lines = [" ".join(line.split()) for line in _normalise_newlines(text).split("\n")]
    return _join_lines(lines)


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
    fences = [(a, b) for a, b in _fence_spans(text) if utf16_length(text[a:b]) <= limit]
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


def _fence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of each fenced code block, fences included."""
    spans: list[tuple[int, int]] = []
    offset, opened_at, fence = 0, 0, ""
    for line in text.split("\n"):
        line_end = offset + len(line)
        if fence:
            if _closes_fence(line, fence):
                spans.append((opened_at, line_end))
                fence = ""
        elif (match := _opens_fence(line)) is not None:
            opened_at, fence = offset, match["fence"]
        offset = line_end + 1
    if fence:
        spans.append((opened_at, len(text)))
    return spans
