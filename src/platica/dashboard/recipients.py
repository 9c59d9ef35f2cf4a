"""A broadcast's recipients as operators bring them: a CSV file (the phone number first, a header
row naming the other columns as template variables: `telefono,1,2`), or numbers one per line.

Spanish Excel saves CSV with `;` between columns, in Windows-1252, often with a BOM: all are
read. Numbers are not checked here: broadcasts.create stores an invalid one as skipped, with why,
and counts it. Errors name the line, as the operator's spreadsheet numbers it.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from platica.dashboard.display import decimal
from platica.dashboard.i18n import _
from platica.outreach.broadcasts import MAX_RECIPIENTS, Recipient

# A first cell that looks like this is a number, so the file has no header row.
NUMBER_LIKE = re.compile(r"^(whatsapp:)?\+?[\d\s\-().]{4,}$")
VARIABLE_NAME = re.compile(r"^\{\{\s*([A-Za-z0-9_]+)\s*\}\}$|^([A-Za-z0-9_]+)$")
SEPARATORS = ";,\t"


class RecipientsError(ValueError):
    """A list that cannot be read, with where and why."""


@dataclass(frozen=True, slots=True)
class Listed:
    """The recipients, and the line each came from (to name it in create's errors)."""

    recipients: list[Recipient]
    lines: list[int]


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Excel's "CSV" on a Spanish Windows: Windows-1252.
        return data.decode("cp1252", errors="replace")


def _separator(first_line: str) -> str:
    counts = {separator: first_line.count(separator) for separator in SEPARATORS}
    best = max(counts, key=lambda separator: counts[separator])
    return best if counts[best] else ","


def _variable(header: str, column: int) -> str:
    found = VARIABLE_NAME.match(header.strip())
    if found is None:
        raise RecipientsError(
            _(
                "line 1, column %(column)s: '%(header)s' is not a template variable name "
                "(use the template's numbers, like 1 and 2, or {{1}})",
                column=column,
                header=header.strip(),
            )
        )
    return found.group(1) or found.group(2)


def too_many(line: int, limit: int) -> str:
    return _(
        "line %(line)s: more than %(limit)s recipients; split the list",
        line=line,
        limit=decimal(limit),
    )


def parse_csv(data: bytes, limit: int = MAX_RECIPIENTS) -> Listed:
    """The recipients of a CSV file; RecipientsError naming the line of the first problem."""
    text = _text(data)
    if not text.strip():
        raise RecipientsError(_("the file is empty"))
    separator = _separator(text.splitlines()[0])
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator)
    names: list[str] | None = None
    listed = Listed([], [])
    try:
        for row in reader:
            line = reader.line_num
            cells = [cell.strip() for cell in row]
            if not any(cells):
                continue
            if names is None and not listed.recipients and not NUMBER_LIKE.match(cells[0]):
                names = [_variable(cell, n) for n, cell in enumerate(cells[1:], start=2) if cell]
                if len(names) != len(set(names)):
                    raise RecipientsError(_("line 1: a variable is named twice in the header"))
                continue
            if not cells[0]:
                raise RecipientsError(
                    _("line %(line)s: no phone number in the first column", line=line)
                )
            extra = cells[1:]
            while extra and not extra[-1]:
                extra.pop()
            known = names or []
            if len(extra) > len(known):
                raise RecipientsError(
                    _(
                        "line %(line)s: %(columns)s columns, but the header names %(named)s",
                        line=line,
                        columns=len(extra) + 1,
                        named=len(known) + 1,
                    )
                    if names is not None
                    else _(
                        "line %(line)s: %(columns)s columns, but the file has no header row "
                        "naming the columns after the number as template variables (like: "
                        "telefono,1,2)",
                        line=line,
                        columns=len(extra) + 1,
                    )
                )
            if len(listed.recipients) >= limit:
                raise RecipientsError(too_many(line, limit))
            values = {name: value for name, value in zip(known, extra, strict=False) if value}
            listed.recipients.append(Recipient(cells[0], values or None))
            listed.lines.append(line)
    except csv.Error as error:
        raise RecipientsError(
            _("line %(line)s: %(error)s", line=reader.line_num, error=error)
        ) from None
    if not listed.recipients:
        raise RecipientsError(_("the file has no recipients, only a header row"))
    return listed


def parse_lines(text: str, limit: int = MAX_RECIPIENTS) -> Listed:
    """Numbers one per line (blank lines skipped)."""
    listed = Listed([], [])
    for line, number in enumerate(text.splitlines(), start=1):
        if not number.strip():
            continue
        if len(listed.recipients) >= limit:
            raise RecipientsError(too_many(line, limit))
        listed.recipients.append(Recipient(number.strip()))
        listed.lines.append(line)
    return listed
