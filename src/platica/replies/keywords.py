"""Opt-out, opt-in and help keywords: messages that never get an LLM reply.

Twilio's default keywords on long codes, matched as Twilio does: the whole message must be the
one keyword ("STOP PLEASE" is an ordinary message), in any case. Surrounding whitespace and
trailing punctuation ("Stop.", "stop!") are ignored.
"""

from __future__ import annotations

from enum import StrEnum


class Keyword(StrEnum):
    opt_out = "opt_out"
    opt_in = "opt_in"
    help = "help"


OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"})
OPT_IN = frozenset({"START", "YES", "UNSTOP"})
HELP = frozenset({"HELP", "INFO"})

KEYWORDS: dict[str, Keyword] = {
    **dict.fromkeys(OPT_OUT, Keyword.opt_out),
    **dict.fromkeys(OPT_IN, Keyword.opt_in),
    **dict.fromkeys(HELP, Keyword.help),
}

# Twilio's OptOutType webhook field (Advanced Opt-Out), which names the keyword's kind.
OPT_OUT_TYPES: dict[str, Keyword] = {
    "STOP": Keyword.opt_out,
    "START": Keyword.opt_in,
    "HELP": Keyword.help,
}

_TRAILING_PUNCTUATION = ".!?,;:…"
# Invisible characters that phones and copy-paste leave around a word; str.strip() keeps them.
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"


def keyword_word(body: str) -> str:
    """The word a keyword message is, as it is matched (and shown in its note): upper case,
    without the spaces, invisible characters and trailing punctuation around it."""
    return _bare(body).upper()


def _bare(body: str) -> str:
    return body.strip().strip(_INVISIBLE).strip().rstrip(_TRAILING_PUNCTUATION).rstrip()


def detect_keyword(body: str, opt_out_type: str | None = None) -> Keyword | None:
    """The keyword `body` is, if any; Twilio's `OptOutType`, when given and known, wins."""
    if opt_out_type and (kind := OPT_OUT_TYPES.get(opt_out_type.strip().upper())) is not None:
        return kind
    word = _bare(body)
    # ASCII only, so that look-alikes such as "\u017ftop" (long s; upper case "STOP") do not match.
    if not word.isascii() or not word.isalpha():
        return None
    return KEYWORDS.get(word.upper())
