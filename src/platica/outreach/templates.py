"""Templates: which may be sent on a channel, their variables, and their text filled in.

A template's text names its variables as {{1}}, {{2}}… (or {{name}}); Twilio keeps a sample
value for each. Every variable must be given a value before anything is sent: a missing one is
refused (422) rather than reaching a customer as a broken message. WhatsApp also refuses values
with line breaks or tabs, or that are empty.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from platica.errors import Unprocessable
from platica.models import Channel, Template, TemplateApproval

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
SID = re.compile(r"^HX[0-9a-fA-F]{32}$")
MAX_VARIABLES = 100
MAX_VALUE_CHARS = 1024


def variables_of(template: Template) -> list[str]:
    """The template's variables, in the order they first appear (then any Twilio declares
    that the text does not use)."""
    names: list[str] = []
    for match in PLACEHOLDER.finditer(template.body):
        if match.group(1) not in names:
            names.append(match.group(1))
    for name in template.variables or {}:
        if name not in names:
            names.append(str(name))
    return names


def sendable(template: Template, channel: Channel) -> bool:
    """Whether it may be sent on the channel: on WhatsApp only once approved."""
    return channel != Channel.whatsapp or template.approval == TemplateApproval.approved


def check_variables(
    template: Template, channel: Channel, variables: Mapping[str, object] | None
) -> dict[str, str]:
    """The values for each of the template's variables, as strings; Unprocessable naming what
    is missing, unknown or unfit."""
    given = {str(name): value for name, value in (variables or {}).items()}
    names = variables_of(template)
    missing = [name for name in names if name not in given]
    if missing:
        raise Unprocessable(
            f"template {template.name!r} needs {_listed(missing)}: "
            f"give a value for each in 'variables'"
        )
    unknown = [name for name in given if name not in names]
    if unknown:
        raise Unprocessable(
            f"template {template.name!r} has no variable {_listed(unknown)} "
            f"(its variables: {_listed(names) if names else 'none'})"
        )
    values: dict[str, str] = {}
    for name in names:
        value = given[name]
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise Unprocessable(f"variable {name!r} must be text")
        text = str(value).strip()
        if not text:
            raise Unprocessable(f"variable {name!r} is empty")
        if len(text) > MAX_VALUE_CHARS:
            raise Unprocessable(f"variable {name!r} is longer than {MAX_VALUE_CHARS} characters")
        if channel == Channel.whatsapp and any(c in text for c in "\n\r\t"):
            raise Unprocessable(
                f"variable {name!r} contains a line break or tab, which WhatsApp refuses"
            )
        values[name] = text
    return values


def fill(body: str, values: Mapping[str, str]) -> str:
    """The template's text with its variables' values: what the customer reads."""
    return PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), body)


def _listed(names: list[str]) -> str:
    return ", ".join("{{" + name + "}}" for name in names)


@dataclass(frozen=True, slots=True)
class Filled:
    """A template ready to send: its ContentSid, its variables' values and its text."""

    template: Template
    content_sid: str
    variables: dict[str, str]
    body: str


async def find_template(
    session: AsyncSession, account_id: uuid.UUID, channel: Channel, ref: str
) -> Template:
    """The account's template by ContentSid (HX…) or name; Unprocessable if there is none, if
    the name is ambiguous, or if it may not be sent on the channel."""
    rows = list(
        await session.scalars(
            select(Template).where(
                Template.account_id == account_id,
                or_(Template.sid == ref, Template.name == ref),
            )
        )
    )
    exact = [row for row in rows if row.sid == ref]
    if exact:
        rows = exact
    if not rows:
        raise Unprocessable(
            f"no template {ref!r} for this account: sync them from Twilio "
            f"(POST /api/{channel.value}/templates/sync) or add it"
        )
    if len(rows) > 1:
        languages = ", ".join(sorted(f"{row.language or '?'} {row.sid}" for row in rows))
        raise Unprocessable(f"several templates are named {ref!r} ({languages}): give its sid")
    template = rows[0]
    if not sendable(template, channel):
        raise Unprocessable(
            f"template {template.name!r} is {template.approval} on WhatsApp, not approved: "
            f"only approved templates can be sent"
        )
    return template


async def fill_template(
    session: AsyncSession,
    account_id: uuid.UUID,
    channel: Channel,
    ref: str,
    variables: Mapping[str, object] | None,
) -> Filled:
    """The account's template `ref`, checked for the channel and filled with `variables`."""
    template = await find_template(session, account_id, channel, ref)
    values = check_variables(template, channel, variables)
    return Filled(template, template.sid, values, fill(template.body, values))
