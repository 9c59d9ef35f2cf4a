"""Understanding inbound media: voice notes transcribed, a PDF's text read, images made ready for a
model that sees them.

Each way of failing raises UnderstandFailed, whose message an operator reads as it is (plain
words, no secrets) and whose `retryable` says whether asking again later may help (a 429, a 5xx, a
timeout) or never will (a corrupt file, a voice note too long).
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import struct
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import mutagen
import openai
from mutagen.aac import AAC
from mutagen.flac import FLAC
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4
from mutagen.oggflac import OggFLAC
from mutagen.oggopus import OggOpus
from mutagen.oggspeex import OggSpeex
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE
from openai import AsyncOpenAI, omit
from PIL import Image, ImageOps, UnidentifiedImageError
from pypdf import PasswordType, PdfReader
from pypdf.errors import PyPdfError

from platica.config import Settings
from platica.media.kinds import bare_type
from platica.metrics import AUDIO_SECONDS, TRANSCRIPTION_SECONDS
from platica.ratelimit import backoff


class UnderstandFailed(Exception):
    """A media item could not be understood; `message` says why in plain words, `retryable`
    whether trying again later may succeed."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


# --------------------------------------------------------------------------------------------------
# Voice notes

# Whisper's limit on an upload; the gpt-4o transcription models take as much.
MAX_AUDIO_BYTES = 25 * 1024 * 1024
# Ten minutes: a longer voice note costs more than it is worth answering, and takes the
# transcription model longer than a reply should wait.
MAX_AUDIO_SECONDS = 600
TRANSCRIBE_ATTEMPTS = 3
# The whole transcription's deadline, retries and their pauses included: ten minutes of audio
# take the model some twenty seconds, and the reply waits meanwhile.
TRANSCRIBE_TIMEOUT_SECONDS = 60.0

# The name and type each audio type is uploaded as. OpenAI picks the decoder by the name's
# extension: WhatsApp's Ogg/Opus voice notes (`audio/ogg; codecs=opus`) go as they are, named
# .ogg, since a .opus name gets "400 Unsupported file format opus".
_UPLOADS: Mapping[str, tuple[str, str]] = {
    "audio/ogg": ("voice.ogg", "audio/ogg"),
    "audio/opus": ("voice.ogg", "audio/ogg"),
    "audio/amr": ("voice.amr", "audio/amr"),
    "audio/mpeg": ("voice.mp3", "audio/mpeg"),
    "audio/mp3": ("voice.mp3", "audio/mpeg"),
    "audio/mp4": ("voice.m4a", "audio/mp4"),
    "audio/m4a": ("voice.m4a", "audio/mp4"),
    "audio/x-m4a": ("voice.m4a", "audio/mp4"),
    "audio/aac": ("voice.m4a", "audio/aac"),
    "audio/wav": ("voice.wav", "audio/wav"),
    "audio/x-wav": ("voice.wav", "audio/wav"),
    "audio/webm": ("voice.webm", "audio/webm"),
}

# What mutagen tries for each type: only the parsers that can apply (all of them for a type
# not listed), so a large file is not read by twenty of them in turn.
_READERS: Mapping[str, tuple[type[mutagen.FileType], ...]] = {
    "audio/ogg": (OggOpus, OggVorbis, OggFLAC, OggSpeex),
    "audio/opus": (OggOpus,),
    "audio/mpeg": (MP3,),
    "audio/mp3": (MP3,),
    "audio/mp4": (MP4,),
    "audio/m4a": (MP4,),
    "audio/x-m4a": (MP4,),
    "audio/aac": (AAC, MP4),
    "audio/wav": (WAVE,),
    "audio/x-wav": (WAVE,),
    "audio/flac": (FLAC,),
    # mutagen reads neither AMR nor WebM.
    "audio/amr": (),
    "audio/webm": (),
}


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    # The audio's length, when its container says (None: unknown).
    seconds: float | None


def audio_seconds(data: bytes, content_type: str) -> float | None:
    """The length of a voice note in seconds, from its container's headers (mutagen); None
    when it cannot be told."""
    readers = _READERS.get(bare_type(content_type))
    if readers == ():
        return None
    try:
        found = mutagen.File(io.BytesIO(data), options=list(readers) if readers else None)
    # mutagen raises its own errors for what it recognises as broken, and plain ones from
    # deeper in its parsers on data crafted to break them.
    except (mutagen.MutagenError, ValueError, IndexError, EOFError, OverflowError, struct.error):
        return None
    length = getattr(getattr(found, "info", None), "length", None)
    if not isinstance(length, int | float) or not 0 <= length < float("inf"):
        return None
    return float(length)


def create_transcriber(settings: Settings) -> Transcriber | None:
    """A Transcriber when an OpenAI key or a compatible server is configured; None otherwise
    (voice notes then stay untranscribed, and the reply says so)."""
    if settings.OPENAI_API_KEY is None and settings.OPENAI_BASE_URL is None:
        return None
    return Transcriber(settings)


class Transcriber:
    """Voice notes to text through the official SDK's audio.transcriptions (OpenAI, or a
    compatible server at OPENAI_BASE_URL), retrying what a moment later may fix."""

    def __init__(self, settings: Settings) -> None:
        key = settings.OPENAI_API_KEY.get_secret_value() if settings.OPENAI_API_KEY else None
        self._deadline = TRANSCRIBE_TIMEOUT_SECONDS
        self._model = settings.TRANSCRIPTION_MODEL
        self._client = AsyncOpenAI(
            # Local servers accept any key, but the SDK insists on one.
            api_key=key or "unused",
            base_url=settings.OPENAI_BASE_URL,
            timeout=self._deadline,
            # Retries are ours: counted, paced by ratelimit.backoff, within one deadline.
            max_retries=0,
        )

    async def transcribe(self, data: bytes, content_type: str, language: str | None) -> Transcript:
        """The voice note's text, `language` ("es", "en") given to the model as a hint.
        UnderstandFailed when it cannot be had: refused at once, without calling the API, for a
        type the API does not take, or a note too big or too long."""
        name, upload_type = _upload_of(content_type)
        if not data:
            raise UnderstandFailed("the voice note is empty")
        if len(data) > MAX_AUDIO_BYTES:
            raise UnderstandFailed(
                f"the voice note is too big to transcribe ({len(data) / 2**20:.1f} MB, "
                f"at most {MAX_AUDIO_BYTES // 2**20} MB)"
            )
        seconds = await asyncio.to_thread(audio_seconds, data, content_type)
        if seconds is not None and seconds > MAX_AUDIO_SECONDS:
            raise UnderstandFailed(
                f"the voice note is too long to transcribe ({_minutes(seconds)} minutes, "
                f"at most {_minutes(MAX_AUDIO_SECONDS)})"
            )
        try:
            async with asyncio.timeout(self._deadline):
                text = await self._attempts((name, data, upload_type), _language_hint(language))
        except TimeoutError as error:
            raise UnderstandFailed(
                f"the transcription took longer than {self._deadline:g} s", retryable=True
            ) from error
        text = text.strip()
        if not text:
            # Silence, or noise: nothing the model could answer.
            raise UnderstandFailed("no words could be made out in the voice note")
        if seconds is not None:
            AUDIO_SECONDS.inc(seconds)
        return Transcript(text, seconds)

    async def _attempts(self, upload: tuple[str, bytes, str], language: str | None) -> str:
        """The transcript, trying up to TRANSCRIBE_ATTEMPTS times while failures are transient;
        a pause that would outlast the deadline is not waited: the failure is raised."""
        loop = asyncio.get_running_loop()
        ends = loop.time() + self._deadline
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                result = await self._client.audio.transcriptions.create(
                    model=self._model,
                    file=upload,
                    language=language if language else omit,
                    response_format="json",
                )
            except openai.APIError as error:
                failure = _failure_of(error)
                # A 429 may say how long to wait: never less than that.
                asked = (
                    _retry_after(error.response.headers)
                    if isinstance(error, openai.RateLimitError)
                    else None
                )
                pause = max(backoff(attempt, 0.5, 4.0), asked or 0.0)
                if (
                    not failure.retryable
                    or attempt >= TRANSCRIBE_ATTEMPTS
                    or loop.time() + pause >= ends
                ):
                    raise failure from error
            else:
                return _text_of(result)
            finally:
                TRANSCRIPTION_SECONDS.observe(time.perf_counter() - started)
            await asyncio.sleep(pause)

    async def aclose(self) -> None:
        await self._client.close()


def _text_of(result: object) -> str:
    text = getattr(result, "text", None)
    if not isinstance(text, str):
        # A proxy's page, or JSON of another shape: the SDK returns it unvalidated.
        raise UnderstandFailed(
            "the transcription service did not answer with a transcript", retryable=True
        )
    return text


def _upload_of(content_type: str) -> tuple[str, str]:
    """The file name and type a voice note of this content type is uploaded as."""
    bare = bare_type(content_type)
    upload = _UPLOADS.get(bare)
    if upload is None:
        raise UnderstandFailed(f"voice notes of type {bare or '(none)'} cannot be transcribed")
    return upload


def _language_hint(language: str | None) -> str | None:
    """The ISO-639-1 code the API takes ("es-MX" → "es"); None for anything else."""
    primary = re.split(r"[-_]", (language or "").strip().lower())[0]
    return primary if len(primary) == 2 and primary.isascii() and primary.isalpha() else None


def _minutes(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to wait (`retry-after-ms`, else `retry-after` in seconds)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(float(headers[name]) * scale, 0.0)
        except (KeyError, ValueError):
            continue
    return None


def _failure_of(error: openai.APIError) -> UnderstandFailed:
    """The UnderstandFailed an SDK error means: retryable when it is transient."""
    if isinstance(error, openai.APITimeoutError):
        return UnderstandFailed("the transcription service timed out", retryable=True)
    if isinstance(error, openai.APIConnectionError):
        return UnderstandFailed("the transcription service could not be reached", retryable=True)
    if not isinstance(error, openai.APIStatusError):
        # The answer did not parse as the SDK expected.
        return UnderstandFailed(
            "the transcription service did not answer with a transcript", retryable=True
        )
    status = error.status_code
    if isinstance(error, openai.RateLimitError):
        if error.code == "insufficient_quota":
            return UnderstandFailed("the OpenAI account is out of credit")
        return UnderstandFailed("the transcription service is rate limited (429)", retryable=True)
    if status >= 500 or status in (408, 409):
        return UnderstandFailed(f"the transcription service failed ({status})", retryable=True)
    if status in (401, 403):
        # OpenAI's 401 quotes part of the key: its message stays out.
        return UnderstandFailed(f"the transcription service refused the key ({status})")
    said = error.body.get("message") if isinstance(error.body, dict) else None
    detail = f": {said[:200]}" if isinstance(said, str) and said else ""
    return UnderstandFailed(f"the transcription service refused the voice note ({status}{detail})")


# --------------------------------------------------------------------------------------------------
# Documents

# About 2,000 tokens: enough for an invoice, a menu or a form, without one PDF crowding out the
# conversation.
MAX_DOCUMENT_CHARS = 8000
MAX_DOCUMENT_PAGES = 30
CUT_MARKER = "[…]"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
# What pypdf raises on a broken file: its own errors, and plain ones from deeper in its parsers.
_PDF_ERRORS = (
    PyPdfError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RecursionError,
    ZeroDivisionError,
)


def pdf_text(
    data: bytes, max_chars: int = MAX_DOCUMENT_CHARS, max_pages: int = MAX_DOCUMENT_PAGES
) -> str:
    """The text of a PDF's first `max_pages` pages, whitespace tidied, at most `max_chars`
    characters (ending in CUT_MARKER when there was more). UnderstandFailed for a PDF that is
    password-protected, broken, or without text (a scan)."""
    found: list[str] = []
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and _locked(reader):
            raise UnderstandFailed("the PDF is password-protected")
        pages = reader.pages
        count = len(pages)
        readable = min(count, max_pages)
        omitted = count > max_pages
        unread = 0
        length = 0
        for index in range(readable):
            try:
                text = _tidy(pages[index].extract_text())
            # One page pypdf cannot make sense of need not cost the others.
            except _PDF_ERRORS:
                unread += 1
                continue
            if text:
                found.append(text)
                length += len(text) + 2
            if length > max_chars and index < readable - 1:
                omitted = True
                break
    except _PDF_ERRORS as error:
        raise UnderstandFailed("the PDF is damaged and cannot be read") from error
    except NotImplementedError as error:
        # An encryption scheme or a filter pypdf does not know.
        raise UnderstandFailed("the PDF uses features Plática cannot read") from error
    if readable and unread == readable:
        raise UnderstandFailed("the PDF is damaged and cannot be read")
    text = "\n\n".join(found)
    if not any(character.isalnum() for character in text):
        raise UnderstandFailed("the PDF has no text to read (a scan or only images)")
    return _cut(text, max_chars) if omitted or len(text) > max_chars else text


def _locked(reader: PdfReader) -> bool:
    """Whether an encrypted PDF stays shut: many open with an empty password (the encryption
    only restricts printing or copying)."""
    try:
        return reader.decrypt("") == PasswordType.NOT_DECRYPTED
    # pypdf needs an extra package for AES (DependencyError), and fails on unknown schemes.
    except (PyPdfError, NotImplementedError):
        return True


def _tidy(text: str) -> str:
    """Each line's runs of whitespace made one space; blank lines at most one in a row."""
    lines: list[str] = []
    for raw in _CONTROL.sub(" ", text).splitlines():
        line = " ".join(raw.split())
        if line or (lines and lines[-1]):
            lines.append(line)
    return "\n".join(lines).strip()


def _cut(text: str, max_chars: int) -> str:
    """`text` cut to fit `max_chars` with CUT_MARKER at its end, at a word's end if one is
    near."""
    room = max(max_chars - len(CUT_MARKER) - 1, 0)
    cut = text[:room]
    if len(text) > room:
        boundary = max(cut.rfind(" "), cut.rfind("\n"))
        if boundary > room * 0.8:
            cut = cut[:boundary]
    return cut.rstrip() + " " + CUT_MARKER


# --------------------------------------------------------------------------------------------------
# Images

# Kept as they come up to these; larger ones are re-encoded (OpenAI takes 20 MB, but a few MB is
# all a model needs, and what goes in the request is sent again with each reply's prompt).
MAX_IMAGE_BYTES = 4 * 1024 * 1024
# The vision models scale to fit 2048 px anyway.
MAX_IMAGE_SIDE = 2048
JPEG_QUALITY = 85
# What the vision models take as they are (an MPO, as phone cameras write, is a JPEG with more
# pictures after it).
_KEPT = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}
# What Pillow may open: no EPS (it runs Ghostscript), nor the scientific and legacy formats.
# HEIC needs a plugin Plática does not ship.
_OPENABLE = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "ICO", "PPM", "TGA")


_WARNINGS_LOCK = threading.Lock()


def image_data_url(data: bytes, content_type: str) -> str:
    """A `data:` URL of the image that a vision model accepts: a PNG, JPEG, WEBP or still GIF
    as it is when small enough; anything else re-encoded as a JPEG that fits MAX_IMAGE_SIDE
    (upright, transparency on white; an animation's first frame). UnderstandFailed when it is
    not an image Plática can open."""
    what = bare_type(content_type) or "the file"
    try:
        # The warning filter is the process's: one image at a time (threads may call this).
        with _WARNINGS_LOCK, warnings.catch_warnings():
            # Pillow warns of metadata it skips in a damaged file (the picture decodes or it
            # does not); and only warns between MAX_IMAGE_PIXELS and twice as many, which are
            # refused too.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_OPENABLE) as picture:
                return _data_url_of(picture, data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnderstandFailed("the image has too many pixels to open") from error
    except UnidentifiedImageError as error:
        raise UnderstandFailed(f"{what} is not an image Plática can open") from error
    # A truncated or malformed image fails as it is decoded.
    except (
        OSError,
        ValueError,
        TypeError,
        IndexError,
        SyntaxError,
        EOFError,
        struct.error,
    ) as error:
        raise UnderstandFailed(f"the image ({what}) is damaged and cannot be opened") from error


def _data_url_of(picture: Image.Image, data: bytes) -> str:
    kept_type = _KEPT.get(picture.format or "")
    animated = picture.format != "MPO" and getattr(picture, "n_frames", 1) > 1
    if (
        kept_type is not None
        and not animated
        and len(data) <= MAX_IMAGE_BYTES
        and max(picture.size) <= MAX_IMAGE_SIDE
    ):
        # Decoded once to be sure of it: a broken image in the request fails the whole reply.
        picture.load()
        return _data_url(kept_type, data)
    picture.seek(0)
    # A JPEG decodes straight at a fraction of its size (still at least MAX_IMAGE_SIDE).
    picture.draft("RGB", (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    upright = ImageOps.exif_transpose(picture)
    if upright.has_transparency_data:
        with_alpha = upright.convert("RGBA")
        flat = Image.new("RGB", with_alpha.size, "white")
        flat.paste(with_alpha, mask=with_alpha.getchannel("A"))
    else:
        flat = upright.convert("RGB")
    flat.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    flat.save(out, format="JPEG", quality=JPEG_QUALITY)
    return _data_url("image/jpeg", out.getvalue())


def _data_url(content_type: str, data: bytes) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"
