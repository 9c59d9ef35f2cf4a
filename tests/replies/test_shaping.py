"""Replies shaped for SMS (plain, cut, encoded) and WhatsApp (formatted, split)."""

from __future__ import annotations

import itertools
import re

import pytest

from platica.replies.shaping import SmsText, shape_sms, shape_whatsapp, split_whatsapp
from platica.sms import sms_encoding, utf16_length

EMOJI = "😀"
FAMILY = "👨\u200d👩\u200d👧"  # one emoji drawn from three, joined by ZWJs


def nonspace(text: str) -> str:
    return "".join(text.split())


def paragraphs(count: int, size: int) -> str:
    """`count` paragraphs of about `size` characters, of numbered sentences."""
    out: list[str] = []
    for p in range(count):
        sentences: list[str] = []
        n = 0
        while len(" ".join(sentences)) < size:
            sentences.append(f"Paragraph {p} sentence {n} says something useful here.")
            n += 1
        out.append(" ".join(sentences))
    return "\n\n".join(out)


class TestShapeSms:
    def test_short_text_passes_through(self):
        assert shape_sms("Hola, ¿qué tal?", 160) == SmsText("Hola, ¿qué tal?", "GSM-7", 1)

    def test_markdown_removed(self):
        assert shape_sms("**Hi** _there_", 160).text == "Hi there"

    def test_whitespace_runs_collapsed_within_lines(self):
        assert shape_sms("a   b\t\tc\n  d  ", 160).text == "a b c\nd"

    def test_newlines_kept(self):
        assert shape_sms("one\ntwo\n\nthree", 160).text == "one\ntwo\n\nthree"

    def test_cut_on_word_boundary(self):
        text = "The quick brown fox jumps over the lazy dog"
        assert shape_sms(text, 20).text == "The quick brown fox"

    def test_cut_exactly_before_a_space(self):
        assert shape_sms("abcde fghij", 5).text == "abcde"

    def test_trailing_comma_removed_after_cut(self):
        assert shape_sms("Yes, of course, we open at nine", 15).text == "Yes, of course"

    @pytest.mark.parametrize("mark", [",", ";", ":", "-", "—", "("])
    def test_dangling_punctuation_removed(self, mark):
        assert shape_sms(f"word word{mark} more text here", 12).text == "word word"

    def test_sentence_end_kept(self):
        assert shape_sms("Done. And more text here", 8).text == "Done."

    def test_hard_cut_without_whitespace(self):
        assert shape_sms("a" * 300, 50).text == "a" * 50

    def test_hard_cut_when_only_whitespace_is_early(self):
        text = "ab " + "c" * 100
        assert shape_sms(text, 20).text == ("ab " + "c" * 100)[:20]

    def test_cut_uses_whitespace_in_second_half(self):
        text = "a" * 12 + " " + "b" * 100
        assert shape_sms(text, 20).text == "a" * 12

    def test_hard_cut_does_not_split_an_emoji_sequence(self):
        result = shape_sms(FAMILY * 10, 7)
        assert result.text == FAMILY
        assert result.encoding == "UCS-2"

    def test_all_dangling_punctuation_still_not_empty(self):
        assert shape_sms("-" * 50, 10).text == "-" * 10

    def test_markdown_only_input_is_not_empty(self):
        assert shape_sms("---", 160).text == "---"

    def test_blank_input_is_empty(self):
        assert shape_sms("   ", 160) == SmsText("", "GSM-7", 1)

    def test_max_chars_one(self):
        assert shape_sms("hello world", 1).text == "h"

    def test_max_chars_below_one_is_rejected(self):
        with pytest.raises(ValueError, match="max_chars"):
            shape_sms("hi", 0)

    def test_encoding_and_segments_of_the_final_text(self):
        result = shape_sms("a" * 150 + " ç" + " b" * 20, 160)
        assert result.text == "a" * 150 + " ç b b b b"
        assert (result.encoding, result.segments) == ("UCS-2", 3)

    def test_ucs2_dropped_when_cut_away(self):
        result = shape_sms("plain words here then ç", 17)
        assert result == SmsText("plain words here", "GSM-7", 1)

    def test_long_gsm_reply_is_several_segments(self):
        result = shape_sms("word " * 100, 320)
        assert len(result.text) <= 320
        assert (result.encoding, result.segments) == ("GSM-7", 3)

    @pytest.mark.parametrize(
        "text",
        [
            "word " * 500,
            "a" * 2000,
            EMOJI * 500,
            f"{EMOJI} " * 500,
            FAMILY * 200,
            "ç" * 999,
            "ñandú, " * 300,
            "https://example.com/" + "x" * 500,
            "**bold** _it_ " * 200,
            "- item\n" * 300,
            "一二三四五六七八九十" * 100,
            "a,b;c:d-" * 200,
            "e\u0301" * 400,  # e + combining acute accent
        ],
        ids=[
            "words",
            "no-spaces",
            "emoji",
            "emoji-spaced",
            "zwj",
            "ucs2",
            "spanish",
            "url",
            "markdown",
            "bullets",
            "cjk",
            "punctuation",
            "combining",
        ],
    )
    @pytest.mark.parametrize("max_chars", [1, 2, 10, 69, 70, 71, 153, 160, 161, 320, 1600])
    def test_never_exceeds_max_chars_and_never_empty(self, text, max_chars):
        result = shape_sms(text, max_chars)
        assert 0 < len(result.text) <= max_chars
        assert (result.encoding, result.segments) == sms_encoding(result.text)


class TestSplitWhatsapp:
    def test_short_text_is_one_part(self):
        assert split_whatsapp("Hola") == ["Hola"]

    def test_text_at_the_limit_is_one_part(self):
        assert split_whatsapp("a" * 1600) == ["a" * 1600]

    def test_text_that_fits_is_stripped(self):
        assert split_whatsapp("  Hola \n") == ["Hola"]

    def test_blank_text_is_no_parts(self):
        assert split_whatsapp(" \n ") == []

    def test_4000_chars_of_paragraphs(self):
        text = paragraphs(10, 390)
        assert 3900 < len(text) < 4200
        parts = split_whatsapp(text)
        assert len(parts) >= 3
        assert all(0 < len(p) <= 1600 for p in parts)
        # Greedy: no two neighbouring parts would have fitted in one message.
        assert all(len(a) + 2 + len(b) > 1600 for a, b in itertools.pairwise(parts))
        assert nonspace("".join(parts)) == nonspace(text)
        assert "\n\n".join(parts) == text  # cut only between paragraphs

    def test_parts_are_in_order(self):
        text = paragraphs(10, 390)
        parts = split_whatsapp(text)
        numbers = [int(n) for p in parts for n in re.findall(r"Paragraph (\d+) sentence 0", p)]
        assert numbers == list(range(10))

    def test_5000_chars_without_spaces_is_hard_split(self):
        text = "x" * 5000
        assert split_whatsapp(text) == ["x" * 1600] * 3 + ["x" * 200]

    def test_one_long_paragraph_splits_at_sentence_ends(self):
        text = paragraphs(1, 3000)
        parts = split_whatsapp(text)
        assert len(parts) == 2
        assert all(p.endswith(".") for p in parts)
        assert " ".join(parts) == text

    def test_line_breaks_preferred_over_sentences(self):
        text = "\n".join(f"Line {i}. Still line {i}." for i in range(200))
        parts = split_whatsapp(text, 200)
        assert all(
            p.endswith(("0.", "1.", "2.", "3.", "4.", "5.", "6.", "7.", "8.", "9.")) for p in parts
        )
        assert "\n".join(parts) == text

    def test_paragraph_preferred_over_line_breaks(self):
        text = "a" * 60 + "\n\n" + "b" * 20 + "\n" + "c" * 30
        assert split_whatsapp(text, 100) == ["a" * 60, "b" * 20 + "\n" + "c" * 30]

    def test_early_paragraph_break_not_taken_when_a_later_boundary_exists(self):
        text = "Hi!\n\n" + "word " * 50
        parts = split_whatsapp(text, 100)
        assert len(parts[0]) > 50

    def test_whitespace_when_no_sentence_end(self):
        text = "word " * 1000
        parts = split_whatsapp(text)
        assert all(p.split() == ["word"] * len(p.split()) for p in parts)
        assert nonspace("".join(parts)) == nonspace(text)

    @pytest.mark.parametrize("end", ["\u3002", "\uff01", "\uff1f"])
    def test_cjk_sentence_ends(self, end):
        text = f"一二三四五六七八九{end}" * 300
        parts = split_whatsapp(text)
        assert all(p.endswith(end) for p in parts)
        assert "".join(parts) == text

    def test_emoji_count_two_towards_the_limit(self):
        parts = split_whatsapp(EMOJI * 1000)
        assert [len(p) for p in parts] == [800, 200]
        assert all(utf16_length(p) <= 1600 for p in parts)

    def test_zwj_sequence_not_split_on_hard_cut(self):
        parts = split_whatsapp(FAMILY * 100, 50)
        assert all(p.startswith("👨") and p.endswith("👧") for p in parts)
        assert "".join(parts) == FAMILY * 100

    def test_fenced_block_that_fits_is_not_split(self):
        code = "```\n" + "line of code\n" * 60 + "```"
        text = "intro words " * 100 + "\n" + code + "\nafter"
        parts = split_whatsapp(text)
        assert any(code in p for p in parts)
        assert all(len(p) <= 1600 for p in parts)
        assert nonspace("".join(parts)) == nonspace(text)

    def test_fenced_block_too_long_is_split(self):
        code = "```\n" + "line of code\n" * 200 + "```"
        parts = split_whatsapp(code)
        assert len(parts) == 2
        assert all(len(p) <= 1600 for p in parts)
        assert nonspace("".join(parts)) == nonspace(code)

    def test_custom_limit(self):
        parts = split_whatsapp("one two three four five six", 10)
        assert parts == ["one two", "three four", "five six"]

    def test_limit_of_one_still_makes_progress_on_emoji(self):
        assert split_whatsapp(f"a{EMOJI}b", 1) == ["a", EMOJI, "b"]

    def test_limit_below_one_is_rejected(self):
        with pytest.raises(ValueError, match="limit"):
            split_whatsapp("hi", 0)

    @pytest.mark.parametrize(
        "text",
        [
            paragraphs(10, 390),
            paragraphs(3, 2500),
            "word " * 2000,
            "x" * 5000,
            EMOJI * 3000,
            f"{EMOJI} " * 2000,
            FAMILY * 500,
            "\n".join("line " * 30 for _ in range(100)),
            "一二三四五六七八九。" * 600,
            "e\u0301" * 3000,
            "- item one\n" * 500,
            ("```\n" + "code\n" * 100 + "```\n\ntext " * 50) * 3,
        ],
        ids=[
            "paragraphs",
            "long-paragraphs",
            "words",
            "no-spaces",
            "emoji",
            "emoji-spaced",
            "zwj",
            "lines",
            "cjk",
            "combining",
            "bullets",
            "code",
        ],
    )
    @pytest.mark.parametrize("limit", [2, 7, 100, 1600])
    def test_parts_fit_are_non_empty_stripped_and_lose_nothing(self, text, limit):
        parts = split_whatsapp(text, limit)
        assert parts
        assert all(p and p == p.strip() and utf16_length(p) <= limit for p in parts)
        assert nonspace("".join(parts)) == nonspace(text)


class TestShapeWhatsapp:
    def test_short_reply_is_converted_and_one_part(self):
        assert shape_whatsapp("**Hola** *amigo*") == ["*Hola* _amigo_"]

    def test_long_reply_is_converted_then_split(self):
        text = "\n\n".join(f"**Point {i}.** " + "detail " * 60 for i in range(10))
        parts = shape_whatsapp(text)
        assert len(parts) > 1
        assert all(len(p) <= 1600 for p in parts)
        assert "**" not in "".join(parts)
        assert all(p.startswith("*Point ") for p in parts)

    def test_custom_limit(self):
        assert shape_whatsapp("**a** b c d", 5) == ["*a* b", "c d"]

    def test_blank_reply_is_no_parts(self):
        assert shape_whatsapp("  ") == []
