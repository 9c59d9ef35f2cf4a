"""What an inbound media item is, by its content type."""

from __future__ import annotations

from platica.models import MediaKind

# Documents whose text Plática reads; other documents are named to the model, not opened.
READABLE_DOCUMENTS = frozenset({"application/pdf"})


def bare_type(content_type: str) -> str:
    """`audio/ogg; codecs=opus` → `audio/ogg`."""
    return content_type.split(";")[0].strip().lower()


def kind_of(content_type: str) -> MediaKind:
    """The kind of item a content type announces. Stickers are WebP images; vCards, videos and
    the rest are `other` (the model is told one arrived, and that it cannot open it)."""
    bare = bare_type(content_type)
    major = bare.partition("/")[0]
    if major == "audio":
        return MediaKind.audio
    if major == "image":
        return MediaKind.image
    if major == "application" and bare != "application/octet-stream":
        return MediaKind.document
    return MediaKind.other


def location_text(latitude: float, longitude: float, address: str | None, label: str | None) -> str:
    """A location as the model (and an operator) reads it."""
    parts = [f"{latitude:.6f}, {longitude:.6f}", *(part for part in (label, address) if part)]
    return "location: " + ", ".join(parts)
