"""SMS encoding: GSM-7 or UCS-2, and the segments a text is billed as."""

from __future__ import annotations

import pytest

from platica.sms import GSM_BASIC, GSM_EXTENSION, sms_encoding, utf16_length

# The GSM 03.38 default alphabet, row by row from 3GPP TS 23.038 (0x1B, the escape, left out).
GSM_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
EMOJI = "😀"
FAMILY = "👨\u200d👩\u200d👧"  # one emoji drawn from three, joined by ZWJs


class TestUtf16Length:
    def test_bmp_characters_count_one(self):
        assert utf16_length("añ€中") == 4

    def test_astral_characters_count_two(self):
        assert utf16_length(EMOJI) == 2

    def test_zwj_sequence_counts_every_code_unit(self):
        assert utf16_length(FAMILY) == 8


class TestSmsEncoding:
    def test_gsm_table_has_127_characters(self):
        assert set(GSM_TABLE) == GSM_BASIC
        assert len(GSM_BASIC) == 127

    def test_whole_basic_table_is_gsm(self):
        assert sms_encoding(GSM_TABLE[:100]) == ("GSM-7", 1)

    def test_plain_ascii_is_gsm(self):
        assert sms_encoding("Hello, world! 123?") == ("GSM-7", 1)

    @pytest.mark.parametrize("char", ["ñ", "Ñ", "é", "ü", "à", "Ç", "¿", "¡", "§", "Δ", "£", "¥"])
    def test_spanish_and_table_characters_are_gsm(self, char):
        assert sms_encoding(f"a{char}b")[0] == "GSM-7"

    @pytest.mark.parametrize(
        "char", ["ç", "á", "í", "ó", "ú", "ã", "õ", "ê", "`", "\u2019", "\u201c", "\u2026"]
    )
    def test_characters_outside_the_table_are_ucs2(self, char):
        # Small ç is not in GSM 03.38 (only capital Ç is), nor are á, í, ó, ú or the backtick.
        assert sms_encoding(f"a{char}b")[0] == "UCS-2"

    def test_emoji_is_ucs2(self):
        assert sms_encoding(f"ok {EMOJI}")[0] == "UCS-2"

    def test_chinese_is_ucs2(self):
        assert sms_encoding("你好")[0] == "UCS-2"

    @pytest.mark.parametrize("char", sorted(GSM_EXTENSION))
    def test_extension_characters_are_gsm(self, char):
        assert sms_encoding(char)[0] == "GSM-7"

    def test_extension_characters_count_two_septets(self):
        assert sms_encoding("€" * 80) == ("GSM-7", 1)
        assert sms_encoding("€" * 81) == ("GSM-7", 2)

    def test_mixed_extension_and_basic_septets(self):
        assert sms_encoding("a" * 158 + "{") == ("GSM-7", 1)
        assert sms_encoding("a" * 159 + "{") == ("GSM-7", 2)

    def test_empty_text_is_one_gsm_segment(self):
        assert sms_encoding("") == ("GSM-7", 1)

    @pytest.mark.parametrize(
        ("length", "segments"),
        [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4), (1530, 10)],
    )
    def test_gsm_segments(self, length, segments):
        assert sms_encoding("a" * length) == ("GSM-7", segments)

    @pytest.mark.parametrize(
        ("length", "segments"), [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3)]
    )
    def test_ucs2_segments(self, length, segments):
        assert sms_encoding("ç" * length) == ("UCS-2", segments)

    @pytest.mark.parametrize(("count", "segments"), [(35, 1), (36, 2), (67, 2), (68, 3)])
    def test_emoji_count_two_code_units(self, count, segments):
        assert sms_encoding(EMOJI * count) == ("UCS-2", segments)

    def test_one_ucs2_character_makes_the_whole_text_ucs2(self):
        assert sms_encoding("a" * 100 + "ç") == ("UCS-2", 2)
