"""Markdown turned into plain text (SMS) and into WhatsApp's formatting."""

from __future__ import annotations

import pytest

from platica.replies.markdown import markdown_to_plain, markdown_to_whatsapp


class TestMarkdownToPlain:
    def test_plain_text_is_unchanged(self):
        assert markdown_to_plain("Hola, ¿cómo estás?") == "Hola, ¿cómo estás?"

    def test_bold_markers_removed(self):
        assert markdown_to_plain("a **bold** b __also__ c") == "a bold b also c"

    def test_italic_markers_removed(self):
        assert markdown_to_plain("a *it* b _also_ c") == "a it b also c"

    def test_bold_italic_markers_removed(self):
        assert markdown_to_plain("***both*** and **bold _it_**") == "both and bold it"

    def test_strike_markers_removed(self):
        assert markdown_to_plain("was ~~10€~~ now 8€") == "was 10€ now 8€"

    def test_snake_case_kept(self):
        assert (
            markdown_to_plain("use snake_case_name and my_var") == "use snake_case_name and my_var"
        )

    @pytest.mark.parametrize(
        "text",
        ["__init__", "def __init__(self):", "obj.__class__", "open __init__.py", "__name__"],
    )
    def test_dunder_identifiers_kept(self, text):
        assert markdown_to_plain(text) == text

    @pytest.mark.parametrize("text", ["2*3*4", "5 * 3 * 2", "a ** b", "rate: 5*"])
    def test_arithmetic_asterisks_kept(self, text):
        assert markdown_to_plain(text) == text

    def test_inline_code_keeps_its_text(self):
        assert markdown_to_plain("run `pip install **x**` now") == "run pip install **x** now"

    def test_double_backtick_code(self):
        assert markdown_to_plain("``a `b` c``") == "a `b` c"

    def test_fenced_code_keeps_content_without_fences(self):
        text = "Try:\n```python\nx = **y**\n_z_ = 1\n```\nDone."
        assert markdown_to_plain(text) == "Try:\nx = **y**\n_z_ = 1\nDone."

    def test_tilde_fence(self):
        assert markdown_to_plain("~~~\ncode\n~~~") == "code"

    def test_unclosed_fence_keeps_the_rest_as_code(self):
        assert markdown_to_plain("a\n```\n*b*") == "a\n*b*"

    @pytest.mark.parametrize("hashes", ["#", "##", "###", "######"])
    def test_headers(self, hashes):
        assert markdown_to_plain(f"{hashes} Title\nbody") == "Title\nbody"

    def test_header_closing_hashes_and_emphasis_removed(self):
        assert markdown_to_plain("## **Big** news ##") == "Big news"

    def test_hashtag_is_not_a_header(self):
        assert markdown_to_plain("#hashtag and C#") == "#hashtag and C#"

    def test_link(self):
        assert markdown_to_plain("[Docs](https://ex.com/docs)") == "Docs (https://ex.com/docs)"

    def test_link_whose_text_is_its_url(self):
        assert markdown_to_plain("[https://ex.com](https://ex.com)") == "https://ex.com"

    def test_link_with_title(self):
        assert markdown_to_plain('[a](https://ex.com "Title")') == "a (https://ex.com)"

    def test_link_with_parentheses_in_url(self):
        text = "[Wiki](https://en.wikipedia.org/wiki/Foo_(bar))"
        assert markdown_to_plain(text) == "Wiki (https://en.wikipedia.org/wiki/Foo_(bar))"

    def test_mailto_link_with_address_as_text(self):
        assert markdown_to_plain("[a@b.co](mailto:a@b.co)") == "mailto:a@b.co"

    def test_image_becomes_its_url(self):
        assert (
            markdown_to_plain("See ![a chart](https://ex.com/c.png)") == "See https://ex.com/c.png"
        )

    def test_autolink(self):
        assert markdown_to_plain("<https://ex.com/x>") == "https://ex.com/x"

    def test_underscores_in_urls_kept(self):
        text = "https://ex.com/_a_/b__c__ and [x](https://ex.com/_y_)"
        assert markdown_to_plain(text) == "https://ex.com/_a_/b__c__ and x (https://ex.com/_y_)"

    @pytest.mark.parametrize("marker", ["-", "*", "+"])
    def test_bullets_become_dashes(self, marker):
        assert markdown_to_plain(f"{marker} one\n{marker} *two*") == "- one\n- two"

    def test_numbered_list_kept(self):
        assert markdown_to_plain("1. one\n2. **two**") == "1. one\n2. two"

    def test_blockquote_marker_removed(self):
        assert markdown_to_plain("> quoted\n> > nested") == "quoted\nnested"

    @pytest.mark.parametrize("rule", ["---", "***", "___", "* * *", "- - -", "====="])
    def test_horizontal_rules_removed(self, rule):
        assert markdown_to_plain(f"a\n\n{rule}\n\nb") == "a\n\nb"

    def test_three_or_more_newlines_collapse_to_two(self):
        assert markdown_to_plain("a\n\n\n\n\nb\n \n \n \nc") == "a\n\nb\n\nc"

    def test_result_is_stripped(self):
        assert markdown_to_plain("\n\n  hi  \n\n") == "hi"

    def test_backslash_escapes(self):
        assert markdown_to_plain(r"\*not italic\* and 5\_000") == "*not italic* and 5_000"

    def test_crlf_newlines(self):
        assert markdown_to_plain("**a**\r\n\r\n\r\n\r\nb") == "a\n\nb"

    def test_unmatched_markers_kept(self):
        assert markdown_to_plain("**unclosed and _open") == "**unclosed and _open"


class TestMarkdownToWhatsapp:
    def test_plain_text_is_unchanged(self):
        assert markdown_to_whatsapp("Hola, ¿cómo estás?") == "Hola, ¿cómo estás?"

    def test_double_asterisk_bold(self):
        assert markdown_to_whatsapp("a **bold** b") == "a *bold* b"

    def test_double_underscore_bold(self):
        assert markdown_to_whatsapp("a __bold__ b") == "a *bold* b"

    def test_single_asterisk_italic(self):
        assert markdown_to_whatsapp("a *it* b") == "a _it_ b"

    def test_underscore_italic_kept(self):
        assert markdown_to_whatsapp("a _it_ b") == "a _it_ b"

    def test_bold_is_not_reread_as_italic(self):
        assert markdown_to_whatsapp("**one** and **two**") == "*one* and *two*"

    def test_bold_and_italic_side_by_side(self):
        assert markdown_to_whatsapp("**bold** *it* **bold**") == "*bold* _it_ *bold*"

    def test_bold_italic(self):
        assert markdown_to_whatsapp("***both***") == "*_both_*"

    def test_italic_inside_bold(self):
        assert markdown_to_whatsapp("**bold _it_ here**") == "*bold _it_ here*"

    def test_bold_inside_italic(self):
        assert markdown_to_whatsapp("*it **bold** it*") == "_it *bold* it_"

    def test_strike(self):
        assert markdown_to_whatsapp("~~old~~ new") == "~old~ new"

    def test_bold_at_line_edges_and_punctuation(self):
        assert markdown_to_whatsapp("**Note:** read **this**.") == "*Note:* read *this*."

    def test_snake_case_not_mangled(self):
        assert markdown_to_whatsapp("set max_retry_count and my_var") == (
            "set max_retry_count and my_var"
        )

    @pytest.mark.parametrize(
        "text",
        [
            "__init__",
            "the __init__ method",
            "def __init__(self):",
            "obj.__class__.__name__",
            "edit __init__.py",
            'if __name__ == "__main__":',
        ],
    )
    def test_dunder_identifiers_not_mangled(self, text):
        assert markdown_to_whatsapp(text) == text

    @pytest.mark.parametrize("text", ["2*3*4", "5 * 3 * 2", "a ** b", "x^2 * y"])
    def test_arithmetic_not_mangled(self, text):
        assert markdown_to_whatsapp(text) == text

    def test_inline_code_untouched(self):
        assert markdown_to_whatsapp("run `a **b** _c_` now **ok**") == "run `a **b** _c_` now *ok*"

    def test_inline_triple_backticks_untouched(self):
        assert markdown_to_whatsapp("```x = **y**```") == "```x = **y**```"

    def test_fenced_block_untouched(self):
        text = "Code:\n```\nx = **y**\n# not a header\n- not a bullet\n```\n**after**"
        expected = "Code:\n```\nx = **y**\n# not a header\n- not a bullet\n```\n*after*"
        assert markdown_to_whatsapp(text) == expected

    def test_fence_language_tag_dropped(self):
        assert markdown_to_whatsapp("```python\nprint(1)\n```") == "```\nprint(1)\n```"

    def test_tilde_fence_becomes_backticks(self):
        assert markdown_to_whatsapp("~~~\n~~x~~\n~~~") == "```\n~~x~~\n```"

    def test_blank_lines_inside_fence_kept(self):
        text = "```\na\n\n\n\nb\n```"
        assert markdown_to_whatsapp(text) == text

    @pytest.mark.parametrize("hashes", ["#", "##", "###", "######"])
    def test_headers_become_bold(self, hashes):
        assert markdown_to_whatsapp(f"{hashes} Title\nbody") == "*Title*\nbody"

    def test_header_with_bold_inside_is_not_double_bolded(self):
        assert markdown_to_whatsapp("## **Big** news") == "*Big news*"

    def test_header_with_italic_inside(self):
        assert markdown_to_whatsapp("# A *fine* day") == "*A _fine_ day*"

    def test_hashtag_is_not_a_header(self):
        assert markdown_to_whatsapp("#hashtag") == "#hashtag"

    def test_link(self):
        assert markdown_to_whatsapp("[our menu](https://ex.com/menu)") == (
            "our menu (https://ex.com/menu)"
        )

    def test_link_with_bold_text(self):
        assert markdown_to_whatsapp("[**menu**](https://ex.com)") == "*menu* (https://ex.com)"

    def test_link_whose_text_is_its_url(self):
        assert markdown_to_whatsapp("[https://ex.com](https://ex.com)") == "https://ex.com"

    def test_image_becomes_its_url(self):
        assert markdown_to_whatsapp("![map](https://ex.com/m.png)") == "https://ex.com/m.png"

    def test_underscores_in_urls_kept(self):
        text = "see https://ex.com/_a_/__b__ now"
        assert markdown_to_whatsapp(text) == text

    def test_asterisks_in_link_urls_kept(self):
        assert markdown_to_whatsapp("[x](https://ex.com/*a*)") == "x (https://ex.com/*a*)"

    @pytest.mark.parametrize("marker", ["-", "*", "+"])
    def test_bullets(self, marker):
        assert markdown_to_whatsapp(f"{marker} one\n{marker} **two**") == "• one\n• *two*"

    def test_nested_bullet_keeps_indent(self):
        assert markdown_to_whatsapp("- a\n  - b") == "• a\n  • b"

    def test_italic_line_is_not_a_bullet(self):
        assert markdown_to_whatsapp("*just italic*") == "_just italic_"

    def test_numbered_list_kept(self):
        assert markdown_to_whatsapp("1. **one**\n2. two") == "1. *one*\n2. two"

    def test_blockquote_kept_as_whatsapp_quote(self):
        assert markdown_to_whatsapp("> **note**") == "> *note*"

    def test_horizontal_rule_removed(self):
        assert markdown_to_whatsapp("a\n\n---\n\nb") == "a\n\nb"

    def test_three_or_more_newlines_collapse_to_two(self):
        assert markdown_to_whatsapp("a\n\n\n\nb") == "a\n\nb"

    def test_backslash_escaped_asterisks_are_literal(self):
        assert markdown_to_whatsapp(r"\*\*not bold\*\*") == "**not bold**"

    def test_emphasis_across_lines_is_not_joined(self):
        assert markdown_to_whatsapp("*a\nb*") == "*a\nb*"

    def test_typical_llm_reply(self):
        text = (
            "## Horario\n\n"
            "Abrimos **de lunes a viernes**:\n\n"
            "- *Mañana*: 9:00\u201314:00\n"
            "- *Tarde*: 16:00\u201320:00\n\n"
            "Más info en [nuestra web](https://ex.com/horario)."
        )
        assert markdown_to_whatsapp(text) == (
            "*Horario*\n\n"
            "Abrimos *de lunes a viernes*:\n\n"
            "• _Mañana_: 9:00\u201314:00\n"
            "• _Tarde_: 16:00\u201320:00\n\n"
            "Más info en nuestra web (https://ex.com/horario)."
        )
