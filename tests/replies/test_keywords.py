"""Opt-out, opt-in and help keywords, matched as Twilio matches them."""

from __future__ import annotations

import pytest

from platica.replies.keywords import HELP, OPT_IN, OPT_OUT, Keyword, detect_keyword


class TestKeywordSets:
    def test_opt_out_keywords_are_twilios_defaults(self):
        assert {
            "STOP",
            "STOPALL",
            "UNSUBSCRIBE",
            "CANCEL",
            "END",
            "QUIT",
            "OPTOUT",
            "REVOKE",
        } == OPT_OUT

    def test_opt_in_keywords_are_twilios_defaults(self):
        assert {"START", "YES", "UNSTOP"} == OPT_IN

    def test_help_keywords_are_twilios_defaults(self):
        assert {"HELP", "INFO"} == HELP

    def test_sets_do_not_overlap(self):
        assert not OPT_OUT & OPT_IN
        assert not OPT_OUT & HELP
        assert not OPT_IN & HELP

    def test_keyword_values(self):
        assert [k.value for k in Keyword] == ["opt_out", "opt_in", "help"]


class TestDetectKeyword:
    @pytest.mark.parametrize("word", sorted(OPT_OUT))
    def test_every_opt_out_keyword(self, word):
        assert detect_keyword(word) is Keyword.opt_out

    @pytest.mark.parametrize("word", sorted(OPT_IN))
    def test_every_opt_in_keyword(self, word):
        assert detect_keyword(word) is Keyword.opt_in

    @pytest.mark.parametrize("word", sorted(HELP))
    def test_every_help_keyword(self, word):
        assert detect_keyword(word) is Keyword.help

    @pytest.mark.parametrize("body", ["stop", "Stop", "sToP", "unsubscribe", "Unstop"])
    def test_case_is_ignored(self, body):
        assert detect_keyword(body) is not None

    @pytest.mark.parametrize("body", [" stop ", "\tSTOP\n", "\u00a0stop\u00a0", "\u200bstop\ufeff"])
    def test_surrounding_whitespace_is_ignored(self, body):
        assert detect_keyword(body) is Keyword.opt_out

    @pytest.mark.parametrize("body", ["Stop.", "stop!", "STOP!!", "Stop?", "stop ."])
    def test_trailing_punctuation_is_ignored(self, body):
        assert detect_keyword(body) is Keyword.opt_out

    @pytest.mark.parametrize("body", ["STOP PLEASE", "please stop", "stop stop", "STOP\nnow"])
    def test_more_than_one_word_is_an_ordinary_message(self, body):
        assert detect_keyword(body) is None

    @pytest.mark.parametrize("body", ["stopped", "stops", "starting", "helpful", "yesterday"])
    def test_longer_words_do_not_match(self, body):
        assert detect_keyword(body) is None

    @pytest.mark.parametrize("body", ["", "   ", "...", "!"])
    def test_empty_or_punctuation_only_is_none(self, body):
        assert detect_keyword(body) is None

    @pytest.mark.parametrize("body", ["hola", "yes please", "sí", "12345", "STOP🛑"])
    def test_other_messages_are_none(self, body):
        assert detect_keyword(body) is None

    def test_leading_punctuation_is_not_ignored(self):
        assert detect_keyword("¡stop") is None

    def test_unicode_look_alike_does_not_match(self):
        # The long s, U+017F, upper-cases to "S"; Twilio would not take this for STOP.
        assert detect_keyword("\u017ftop") is None

    @pytest.mark.parametrize(
        ("opt_out_type", "expected"),
        [("STOP", Keyword.opt_out), ("START", Keyword.opt_in), ("HELP", Keyword.help)],
    )
    def test_opt_out_type_wins_over_the_body(self, opt_out_type, expected):
        assert detect_keyword("hello there", opt_out_type) is expected

    def test_opt_out_type_wins_over_a_contradicting_keyword(self):
        assert detect_keyword("START", "STOP") is Keyword.opt_out

    @pytest.mark.parametrize("opt_out_type", ["stop", " Stop "])
    def test_opt_out_type_case_and_whitespace_are_ignored(self, opt_out_type):
        assert detect_keyword("anything", opt_out_type) is Keyword.opt_out

    @pytest.mark.parametrize("opt_out_type", [None, "", "UNKNOWN"])
    def test_missing_or_unknown_opt_out_type_falls_back_to_the_body(self, opt_out_type):
        assert detect_keyword("stop", opt_out_type) is Keyword.opt_out
        assert detect_keyword("hi", opt_out_type) is None
