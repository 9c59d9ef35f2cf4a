"""Reading a broadcast's recipient list as operators bring it (dashboard/recipients.py)."""

from __future__ import annotations

import pytest

from platica.dashboard import i18n
from platica.dashboard.recipients import RecipientsError, parse_csv, parse_lines


@pytest.fixture(autouse=True)
def _in_english():
    """The errors in English, as the assertions (test_i18n.py checks a Spanish one)."""
    with i18n.speaking("en"):
        yield


class TestParseCsv:
    def test_spanish_excel_semicolons_bom_and_windows_1252(self):
        data = "telefono;1;2\r\n+34600111222;Begoña;10:30\r\n\r\n+34600333444;Luis;\r\n"
        listed = parse_csv(b"\xef\xbb\xbf" + data.encode("utf-8"))
        assert [(r.to, r.variables) for r in listed.recipients] == [
            ("+34600111222", {"1": "Begoña", "2": "10:30"}),
            ("+34600333444", {"1": "Luis"}),
        ]
        assert listed.lines == [2, 4]
        assert parse_csv(data.encode("cp1252")).recipients[0].variables == {
            "1": "Begoña",
            "2": "10:30",
        }

    def test_numbers_only_without_header(self):
        listed = parse_csv(b"+34600111222\n+34 600 333 444\n")
        assert [r.to for r in listed.recipients] == ["+34600111222", "+34 600 333 444"]
        assert listed.recipients[0].variables is None

    def test_header_names_in_braces(self):
        listed = parse_csv(
            b'telefono,{{1}},"{{ nombre }}"\n+34600111222,Ana,"Ana, la de la tienda"\n'
        )
        assert listed.recipients[0].variables == {"1": "Ana", "nombre": "Ana, la de la tienda"}

    def test_at_most_the_limit(self):
        rows = "".join(f"+3460011{n:04d}\n" for n in range(4))
        assert len(parse_csv(rows.encode(), limit=4).recipients) == 4
        with pytest.raises(RecipientsError, match=r"^line 4: more than 3 recipients"):
            parse_csv(rows.encode(), limit=3)

    def test_empty_file(self):
        with pytest.raises(RecipientsError, match="the file is empty"):
            parse_csv(b"\xef\xbb\xbf \n")


class TestParseLines:
    def test_blank_lines_skipped_and_counted(self):
        listed = parse_lines("+34600111222\n\n  +34600333444  \n")
        assert [r.to for r in listed.recipients] == ["+34600111222", "+34600333444"]
        assert listed.lines == [1, 3]
