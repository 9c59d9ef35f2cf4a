"""Markdown in a model's reply, turned into plain text (SMS) or WhatsApp's own formatting.

Pure functions, no I/O. Line by line (fenced code, headers, quotes, bullets, rules), then inside
each line (code spans, links, URLs, emphasis), where text that must come through untouched is
stashed behind a placeholder while emphasis is converted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

# ---------------------------------------------------------------------------------------------
# Line by line

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


def fence_spans(text: str) -> list[tuple[int, int]]:
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


def normalise_newlines(text: str) -> str:
    """Every line break as \\n, and no character that could pass for a placeholder."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace(_OPEN, "").replace(_CLOSE, "")


def join_lines(lines: list[str]) -> str:
    """The lines joined, at most one blank line in a row, stripped."""
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def markdown_to_plain(text: str) -> str:
    """Markdown turned into plain text for SMS.

    Emphasis and strike-through markers go (underscores inside words such as snake_case and
    identifiers such as __init__ stay), `code` keeps its text, fenced blocks keep their
    content without the fences, "# X" becomes "X", [text](url) becomes "text (url)", an image
    becomes its URL, bullets become "- ", blockquote markers and horizontal rules go.
    """
    lines: list[str] = []
    for kind, line in _lines(normalise_newlines(text)):
        if kind == "code":
            lines.append(line.rstrip())
        elif kind == "text":
            lines.append(_plain_line(line).rstrip())
    return join_lines(lines)


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
    for kind, line in _lines(normalise_newlines(text)):
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
# Inside a line

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
