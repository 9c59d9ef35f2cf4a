"""Small, deterministic media files for the tests: an Ogg Opus voice note, PDFs, images.

Built here byte by byte (or with Pillow and pypdf) so that no binary sample has to be kept in the
repository, and each test says what it needs: `ogg_opus(3.5)`, `pdf(["Factura 1234"])`.
"""

from __future__ import annotations

import io
import random
import struct

from PIL import Image
from pypdf import PdfWriter

# Spanish first, as Plática's customers write.
INVOICE_LINES = [
    "Factura 1234 — Total: 560 MXN",
    "Cliente: Panadería La Espiga, Oaxaca",
    "Vence el 15 de enero; pago por transferencia.",
]

# --------------------------------------------------------------------------------------------------
# Ogg Opus

OPUS_RATE = 48_000
# What libopus encoders write (6.5 ms at 48 kHz): mutagen subtracts it from the last granule.
OPUS_PRE_SKIP = 312
# One Opus packet: TOC byte 0xF8 (CELT fullband, 20 ms, mono, one frame) and an empty frame,
# which RFC 6716 allows (the decoder conceals it: silence).
SILENT_PACKET = b"\xf8"
_MAX_SEGMENTS = 255


def _ogg_crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


_CRC_TABLE = _ogg_crc_table()


def ogg_crc(data: bytes) -> int:
    """Ogg's page checksum: CRC-32 with polynomial 0x04C11DB7, not reflected, starting at 0."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[((crc >> 24) & 0xFF) ^ byte]
    return crc


def ogg_page(
    packets: list[bytes], *, granule: int, sequence: int, flags: int = 0, serial: int = 0x504C4154
) -> bytes:
    """One Ogg page holding whole packets (each under 255 bytes here), its CRC filled in."""
    table = bytearray()
    for packet in packets:
        table.extend([255] * (len(packet) // 255))
        table.append(len(packet) % 255)
    if len(table) > _MAX_SEGMENTS:
        raise ValueError("too many packets for one Ogg page")
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, sequence, 0, len(table))
    page = header + bytes(table) + b"".join(packets)
    crc = ogg_crc(page)
    return page[:22] + struct.pack("<I", crc) + page[26:]


def ogg_opus(seconds: float, *, vendor: str = "platica-tests") -> bytes:
    """A WhatsApp-like voice note: OpusHead page, OpusTags page, one audio page of silent 20 ms
    packets (as many as fit) whose granule position says `seconds` at 48 kHz, the last page."""
    head = struct.pack("<8sBBHIhB", b"OpusHead", 1, 1, OPUS_PRE_SKIP, 16_000, 0, 0)
    encoded_vendor = vendor.encode()
    tags = b"OpusTags" + struct.pack("<I", len(encoded_vendor)) + encoded_vendor
    tags += struct.pack("<I", 0)
    packets = [SILENT_PACKET] * max(1, min(round(seconds / 0.02), _MAX_SEGMENTS))
    granule = OPUS_PRE_SKIP + round(seconds * OPUS_RATE)
    return b"".join(
        [
            ogg_page([head], granule=0, sequence=0, flags=0x02),
            ogg_page([tags], granule=0, sequence=1),
            ogg_page(packets, granule=granule, sequence=2, flags=0x04),
        ]
    )


# --------------------------------------------------------------------------------------------------
# PDF


def _pdf_string(text: str) -> bytes:
    """A PDF literal string in WinAnsiEncoding (cp1252), parentheses and backslashes escaped."""
    raw = text.encode("cp1252")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def pdf_pages(pages: list[list[str]]) -> bytes:
    """A hand-written PDF, one page per list of lines, in Helvetica (WinAnsiEncoding); a page
    without lines has no text at all, like a scan."""
    count = len(pages)
    # Objects: 1 catalog, 2 pages, 3 font, then a page and its content stream for each page.
    page_ids = [4 + 2 * index for index in range(count)]
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids ["
        + b" ".join(b"%d 0 R" % page_id for page_id in page_ids)
        + b"] /Count %d >>" % count,
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    }
    for page_id, lines in zip(page_ids, pages, strict=True):
        content = b"BT /F1 12 Tf 72 720 Td 16 TL\n"
        content += b"".join(_pdf_string(line) + b" Tj T*\n" for line in lines)
        content += b"ET\n"
        objects[page_id] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (page_id + 1)
        )
        objects[page_id + 1] = b"<< /Length %d >>\nstream\n" % len(content) + content + b"endstream"
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    out += b"".join(b"%010d 00000 n \n" % offsets[number] for number in range(1, size))
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return bytes(out)


def pdf(text_lines: list[str]) -> bytes:
    """A one-page PDF with these lines of text (none: a page without text, like a scan)."""
    return pdf_pages([text_lines])


def encrypted_pdf(text_lines: list[str], password: str = "clave-secreta") -> bytes:
    """pdf(text_lines) locked with a user password (RC4-128: pypdf needs no extra package)."""
    writer = PdfWriter(clone_from=io.BytesIO(pdf(text_lines)))
    writer.encrypt(user_password=password, owner_password=password + "!", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# --------------------------------------------------------------------------------------------------
# Images


def picture(width: int, height: int, *, mode: str = "RGB", noisy: bool = False) -> Image.Image:
    """A deterministic picture: a colour gradient, or seeded noise (which does not compress, to
    make a file big with few pixels)."""
    if noisy:
        bands = len(mode)
        data = random.Random(f"{width}x{height}{mode}").randbytes(width * height * bands)
        return Image.frombytes(mode, (width, height), data)
    red = Image.linear_gradient("L").resize((width, height))
    green = red.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    blue = Image.new("L", (width, height), 96)
    image = Image.merge("RGB", (red, green, blue))
    if mode == "RGBA":
        image.putalpha(Image.linear_gradient("L").resize((width, height)))
    elif mode != "RGB":
        image = image.convert(mode)
    return image


def image(width: int, height: int, format: str, *, mode: str = "RGB", noisy: bool = False) -> bytes:
    """picture(...) saved in Pillow's `format` ("PNG", "JPEG", "BMP", "TIFF", "WEBP"...)."""
    out = io.BytesIO()
    options = {"quality": 90} if format == "JPEG" else {}
    picture(width, height, mode=mode, noisy=noisy).save(out, format=format, **options)
    return out.getvalue()


def png(width: int, height: int, *, mode: str = "RGB", noisy: bool = False) -> bytes:
    return image(width, height, "PNG", mode=mode, noisy=noisy)


def jpeg(width: int, height: int, *, noisy: bool = False) -> bytes:
    return image(width, height, "JPEG", noisy=noisy)


def animated_gif(width: int, height: int, frames: int = 3) -> bytes:
    """A looping GIF of `frames` frames, each a different grey."""
    shots = [Image.new("L", (width, height), 40 + 60 * index) for index in range(frames)]
    out = io.BytesIO()
    shots[0].save(out, format="GIF", save_all=True, append_images=shots[1:], duration=100, loop=0)
    return out.getvalue()


def rotated_jpeg(width: int, height: int) -> bytes:
    """A JPEG stored `width` by `height` whose EXIF says to turn it a quarter (orientation 6), as
    phone cameras write it: shown upright it is `height` by `width`."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    picture(width, height).save(out, format="JPEG", quality=90, exif=exif)
    return out.getvalue()
