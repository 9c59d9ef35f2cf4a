"""SMS encoding: whether Twilio sends a text as GSM-7 or UCS-2, and how many segments it bills.

Pure functions, no I/O, nothing of Plática imported: replies are shaped with it, and an
operator's manual reply is counted with it.
"""

from __future__ import annotations

import math

GSM_7 = "GSM-7"
UCS_2 = "UCS-2"

# GSM 03.38 default alphabet (3GPP TS 23.038), without the escape code. Note Ç (capital) is
# in it but ç (small) is not, and there is no backtick.
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each costs an escape plus the character, so two septets.
GSM_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM_SINGLE, GSM_CONCATENATED = 160, 153
UCS_SINGLE, UCS_CONCATENATED = 70, 67


def sms_encoding(text: str) -> tuple[str, int]:
    """The encoding Twilio will use for `text` and how many segments it is billed as.

    GSM-7 when every character is in the GSM 03.38 default alphabet or its extension table
    (extension characters count as two septets); otherwise UCS-2, counted in UTF-16 code units
    (an emoji outside the Basic Multilingual Plane counts as two). Empty text is one segment.
    """
    if all(c in GSM_BASIC or c in GSM_EXTENSION for c in text):
        septets = sum(2 if c in GSM_EXTENSION else 1 for c in text)
        return GSM_7, _segments(septets, GSM_SINGLE, GSM_CONCATENATED)
    return UCS_2, _segments(utf16_length(text), UCS_SINGLE, UCS_CONCATENATED)


def _segments(units: int, single: int, concatenated: int) -> int:
    return 1 if units <= single else math.ceil(units / concatenated)


def utf16_length(text: str) -> int:
    """Length in UTF-16 code units: characters outside the BMP (most emoji) count twice."""
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)
