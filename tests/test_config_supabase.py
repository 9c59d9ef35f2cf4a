"""SUPABASE_URL: the project URL alone, https (http only on the loopback), a one-line error."""

from __future__ import annotations

import pytest

from platica.config import ConfigError, load_settings


def supabase_url(value: str) -> str | None:
    return load_settings(_env_file=None, SUPABASE_URL=value).SUPABASE_URL


class TestSupabaseUrl:
    @pytest.mark.parametrize(
        ("given", "kept"),
        [
            ("https://abcdefghijklmnop.supabase.co", "https://abcdefghijklmnop.supabase.co"),
            ("https://abcdefghijklmnop.supabase.co/", "https://abcdefghijklmnop.supabase.co"),
            ("http://127.0.0.1:54321", "http://127.0.0.1:54321"),
            ("http://localhost:54321", "http://localhost:54321"),
            ("", None),
        ],
    )
    def test_accepted(self, given: str, kept: str | None) -> None:
        assert supabase_url(given) == kept

    @pytest.mark.parametrize(
        ("given", "says"),
        [
            ("abcdefghijklmnop.supabase.co", "must be a URL like https://host"),
            ("http://abcdefghijklmnop.supabase.co", "must be an https:// URL"),
            ("https://abcdefghijklmnop.supabase.co/auth/v1", "no path such as /auth/v1"),
        ],
    )
    def test_refused(self, given: str, says: str) -> None:
        with pytest.raises(ConfigError) as caught:
            supabase_url(given)
        message = str(caught.value)
        assert message.startswith("Invalid configuration: SUPABASE_URL: ")
        assert says in message
        assert "\n" not in message
