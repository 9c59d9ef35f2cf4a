"""Serving a media item's bytes (media/serving.py), without a server: the type and disposition a
browser gets, byte ranges for players, and why an item without kept bytes cannot be served. Over
HTTP, with Twilio's copy fetched: tests/dashboard/test_media.py and tests/api/test_routes.py."""

from __future__ import annotations

from typing import Any

import pytest

from platica.errors import MediaUnavailable
from platica.media.serving import StoredMedia, media_response
from tests.media.samples import ogg_opus

VOICE = ogg_opus(2.0)


def stored(**columns: Any) -> StoredMedia:
    values: dict[str, Any] = {
        "id": 7,
        "kind": "audio",
        "content_type": "audio/ogg; codecs=opus",
        "url": None,
        "content": VOICE,
        "sha256": "ab" * 32,
        "deleted_at": None,
    }
    values.update(columns)
    return StoredMedia(**values)


class TestMediaResponse:
    async def test_kept_bytes_with_their_bare_type(self):
        response = await media_response(stored(), None, {})
        assert response.status_code == 200
        assert response.body == VOICE
        assert response.headers["content-type"] == "audio/ogg"
        assert response.headers["content-disposition"] == 'inline; filename="audio-7.ogg"'
        assert response.headers["accept-ranges"] == "bytes"
        assert response.headers["etag"] == f'"{"ab" * 32}"'

    @pytest.mark.parametrize(
        ("kind", "content_type", "served", "disposition"),
        [
            ("image", "image/jpeg", "image/jpeg", 'inline; filename="image-7.jpg"'),
            ("image", "image/svg+xml", "image/svg+xml", 'attachment; filename="image-7.svg"'),
            (
                "document",
                "application/pdf",
                "application/pdf",
                'attachment; filename="document-7.pdf"',
            ),
            ("other", "text/html", "text/html", 'attachment; filename="other-7"'),
            ("other", "video/mp4", "video/mp4", 'attachment; filename="other-7.mp4"'),
            (
                "other",
                'video/mp4"; x=1',
                "application/octet-stream",
                'attachment; filename="other-7"',
            ),
            ("other", "", "application/octet-stream", 'attachment; filename="other-7"'),
        ],
    )
    async def test_only_pictures_and_sound_are_shown_in_place(
        self, kind, content_type, served, disposition
    ):
        item = stored(kind=kind, content_type=content_type, content=b"%PDF-1.4 ...")
        response = await media_response(item, None, {})
        assert response.headers["content-type"].split(";")[0] == served
        assert response.headers["content-disposition"] == disposition
        assert "sandbox" in response.headers["content-security-policy"]

    async def test_unchanged_is_304(self):
        response = await media_response(stored(), None, {"if-none-match": f'"{"ab" * 32}"'})
        assert (response.status_code, response.body) == (304, b"")

    @pytest.mark.parametrize(
        ("header", "status", "first", "last"),
        [
            ("bytes=0-9", 206, 0, 9),
            ("bytes=10-", 206, 10, None),
            ("bytes=-16", 206, -16, None),
            ("bytes=0-99999999", 206, 0, None),
            ("bytes=99999999-", 416, None, None),
            ("bytes=-0", 416, None, None),
            ("bytes=9-3", 200, None, None),
            ("bytes=0-1, 4-5", 200, None, None),
            ("bytes=-", 200, None, None),
            ("items=0-1", 200, None, None),
            ("bytes=" + "9" * 5000 + "-", 200, None, None),
        ],
    )
    async def test_a_range_for_players(self, header, status, first, last):
        response = await media_response(stored(), None, {"range": header})
        size = len(VOICE)
        assert response.status_code == status
        if status == 206:
            start = first % size
            end = size - 1 if last is None else last
            assert response.body == VOICE[start : end + 1]
            assert response.headers["content-range"] == f"bytes {start}-{end}/{size}"
        elif status == 416:
            assert response.headers["content-range"] == f"bytes */{size}"
            assert response.body == b""
        else:
            assert response.body == VOICE

    @pytest.mark.parametrize(
        ("columns", "why"),
        [
            ({"kind": "location", "content_type": ""}, "is a location: it has no file"),
            ({}, "Twilio gave no URL for it"),
            ({"url": "https://api.twilio.com/x"}, "Twilio is not configured (dry run)"),
        ],
    )
    async def test_no_kept_bytes_and_nothing_to_fetch_says_why(self, columns, why):
        with pytest.raises(MediaUnavailable) as raised:
            await media_response(stored(content=None, sha256=None, **columns), None, {})
        assert why in raised.value.message
        assert raised.value.status_code == 404
