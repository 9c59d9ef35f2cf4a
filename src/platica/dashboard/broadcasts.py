"""The broadcasts pages: the account's broadcasts with their progress, a new one from a CSV file
(or numbers one per line), and one broadcast's figures, polled until it is over, with Cancel.

Created, read and canceled through outreach/broadcasts.py, as POST /api/{channel}/broadcasts
does; the broadcaster (in the worker) hands the recipients over at the channel's pace.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from platica.dashboard import display, web
from platica.dashboard.conversation import sendable_templates
from platica.dashboard.i18n import N_, _
from platica.dashboard.recipients import Listed, RecipientsError, parse_csv, parse_lines
from platica.dashboard.settings import channel_configs
from platica.dashboard.web import (
    OperatorVisit,
    PostedForm,
    PostedUpload,
    Visit,
    embed,
    live,
    not_found,
    redirect,
    render,
    row_id,
)
from platica.errors import NotFound, PlaticaError
from platica.http import FormData, first
from platica.jobs.runner import commit_and_wake
from platica.logging import get_logger
from platica.models import BroadcastStatus, Channel
from platica.outreach import broadcasts
from platica.outreach.broadcasts import MAX_RECIPIENTS, NewBroadcast

log = get_logger(__name__)
router = APIRouter(include_in_schema=False)

LIST_LIMIT = 50
STATUSES = {
    BroadcastStatus.sending: N_("Sending"),
    BroadcastStatus.done: N_("Done"),
    BroadcastStatus.canceled: N_("Canceled"),
}
NOTICES = {
    "created": N_("Broadcast created: its recipients are handed over at the channel's pace."),
    "canceled": N_("Broadcast canceled: recipients not handed over yet will not be sent."),
}
CREATE_INDEX = re.compile(r"^recipients\[(\d+)\]")


def _shown(view: dict[str, Any]) -> dict[str, Any]:
    """A broadcast's view (broadcasts.view) with what the pages show of it."""
    total = view["total"]
    done = total - view["queued"]
    return {
        **view,
        "done": done,
        "percent": 100 if not total else done * 100 // total,
        "status_text": _(STATUSES[view["status"]])
        if view["status"] in STATUSES
        else str(view["status"]),
        "channel_name": display.CHANNEL_NAMES.get(view["channel"], str(view["channel"])),
        "path": f"/broadcasts/{view['channel']}/{view['id']}",
        "over": view["status"] != BroadcastStatus.sending and view["queued"] == 0,
    }


@router.get("/broadcasts")
async def broadcasts_page(visit: OperatorVisit) -> Response:
    """The latest broadcasts of both channels, newest first, with their progress."""
    shown: list[dict[str, Any]] = []
    async with visit.db() as session:
        for channel in Channel:
            found = await broadcasts.list_broadcasts(
                session, channel, visit.me.account_id, LIST_LIMIT
            )
            shown += [_shown(await broadcasts.view(session, item)) for item in found]
    shown.sort(key=lambda item: (item["created_at"], item["id"]), reverse=True)
    return render(visit, "broadcasts.html", "broadcasts", items=shown[:LIST_LIMIT])


async def _form_page(
    visit: Visit,
    *,
    status_code: int = 200,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
) -> Response:
    account_id = visit.me.account_id
    channels: list[str] = []
    templates: list[dict[str, Any]] = []
    if account_id is not None:
        configs = await channel_configs(visit)
        channels = [channel for channel, config in configs.items() if config is not None]
        async with visit.db() as session:
            # Every template may go by SMS; on WhatsApp only the approved ones.
            templates = await sendable_templates(session, account_id, Channel.sms)
        for template in templates:
            template["note"] = "" if template["approved"] else "not approved: SMS only"
    values = values or {}
    return render(
        visit,
        "broadcast_new.html",
        "broadcasts",
        status_code=status_code,
        channels=channels,
        templates=templates,
        values={"channel": channels[0] if channels else "", **values},
        errors=errors or {},
        max_recipients=MAX_RECIPIENTS,
    )


@router.get("/broadcasts/new")
async def new_broadcast_page(visit: OperatorVisit) -> Response:
    """The form for a new broadcast: the message, and its recipients as a CSV file."""
    return await _form_page(visit)


def _listed(upload_file: bytes | None, numbers: str) -> tuple[Listed, list[str]]:
    """Every recipient of the file and of the numbers box, with where each came from."""
    listed = Listed([], [])
    where: list[str] = []
    if upload_file:
        try:
            from_file = parse_csv(upload_file)
        except RecipientsError as error:
            raise RecipientsError(_("The file, %(error)s", error=error)) from None
        listed.recipients.extend(from_file.recipients)
        where += [_("the file's line %(line)s", line=line) for line in from_file.lines]
    if numbers.strip():
        try:
            from_box = parse_lines(numbers, MAX_RECIPIENTS - len(listed.recipients))
        except RecipientsError as error:
            raise RecipientsError(_("The numbers, %(error)s", error=error)) from None
        listed.recipients.extend(from_box.recipients)
        where += [_("the numbers' line %(line)s", line=line) for line in from_box.lines]
    if not listed.recipients:
        raise RecipientsError(_("Add the recipients: a CSV file, or numbers one per line."))
    return listed, where


def _shared_variables(
    form: FormData, template_sid: str, templates: list[dict[str, Any]]
) -> dict[str, str]:
    chosen = next((t for t in templates if t["sid"] == template_sid), None)
    if chosen is None:
        return {}
    shared: dict[str, str] = {}
    for name in chosen["variables"]:
        value = (first(form, f"var-{chosen['id']}-{name}") or "").strip()
        if value:
            shared[name] = value
    return shared


@router.post("/broadcasts")
async def create_broadcast(visit: OperatorVisit, upload: PostedUpload) -> Response:
    """Create the broadcast (whole or not at all); the broadcaster sends it in the background."""
    form = upload.form
    account_id = visit.me.account_id
    if account_id is None:
        return await _form_page(visit, status_code=422)
    values: dict[str, Any] = {
        "channel": first(form, "channel") or "",
        "name": (first(form, "name") or "").strip(),
        "body": (first(form, "body") or "").replace("\r\n", "\n").strip(),
        "numbers": first(form, "numbers") or "",
        "sid": first(form, "template") or "",
        "typed": {name: items[0] for name, items in form.items() if name.startswith("var-")},
    }
    errors: dict[str, str] = {}
    if values["channel"] not in display.CHANNEL_NAMES:
        errors["channel"] = _("Choose WhatsApp or SMS.")
    if values["sid"] and values["body"]:
        errors["message"] = _("Write a text or choose a template, not both.")
    elif not values["sid"] and not values["body"]:
        errors["message"] = _("Write the text to send, or choose a template.")
    try:
        listed, where = _listed(upload.files.get("csv"), values["numbers"])
    except RecipientsError as error:
        errors["recipients"] = str(error)
    if errors:
        return await _form_page(visit, status_code=422, values=values, errors=errors)
    channel = Channel(values["channel"])
    problem: PlaticaError | None = None
    async with visit.db() as session:
        templates = await sendable_templates(session, account_id, Channel.sms)
        new = NewBroadcast(
            recipients=listed.recipients,
            body=values["body"] or None,
            template=values["sid"] or None,
            variables=_shared_variables(form, values["sid"], templates) or None,
            name=values["name"][:200],
        )
        try:
            broadcast = await broadcasts.create(session, account_id, channel, new)
            await commit_and_wake(session, None)
        except PlaticaError as error:
            await session.rollback()
            problem = error
    if problem is not None:
        # create() counts recipients from 0; the operator knows them by their line.
        message = CREATE_INDEX.sub(lambda found: where[int(found[1])], problem.message)
        if isinstance(problem, NotFound):
            message = f"this account has no {display.CHANNEL_NAMES[channel.value]} number"
        return await _form_page(
            visit,
            status_code=problem.status_code,
            values=values,
            errors={"create": message[:1].upper() + message[1:]},
        )
    if visit.state.broadcaster is not None:
        visit.state.broadcaster.poke()
    log.info("dashboard.broadcast_created", broadcast_id=broadcast.id, channel=channel.value)
    return redirect(visit, f"/broadcasts/{channel.value}/{broadcast.id}?notice=created")


async def _load(visit: Visit, channel: str, broadcast_id: str) -> dict[str, Any] | None:
    number = row_id(broadcast_id)
    if channel not in display.CHANNEL_NAMES or number is None:
        return None
    async with visit.db() as session:
        try:
            found = await broadcasts.get_broadcast(
                session, Channel(channel), visit.me.account_id, number
            )
        except NotFound:
            return None
        return _shown(await broadcasts.view(session, found))


@router.get("/broadcasts/{channel}/{broadcast_id}")
async def broadcast_page(visit: OperatorVisit, channel: str, broadcast_id: str) -> Response:
    """A broadcast's figures, refreshed until every recipient is handed over."""
    shown = await _load(visit, channel, broadcast_id)
    if shown is None:
        return not_found(visit, "such broadcast")
    options: dict[str, Any] = {
        "live_id": "progress",
        # Over: nothing will change but delivery reports, so the page stops asking.
        "every": 0 if shown["over"] else web.POLL_SECONDS,
        "poll_url": f"{visit.root}{shown['path']}?fragment=progress",
    }
    if visit.request.query_params.get("fragment") == "progress":
        return live(visit, "_broadcast_progress.html", **options, b=shown)
    return render(
        visit,
        "broadcast.html",
        "broadcasts",
        b=shown,
        notice=_(NOTICES[notice])
        if (notice := visit.request.query_params.get("notice", "")) in NOTICES
        else None,
        live=embed(visit, "_broadcast_progress.html", **options, b=shown),
    )


@router.post("/broadcasts/{channel}/{broadcast_id}/cancel")
async def cancel_broadcast(
    visit: OperatorVisit, _form: PostedForm, channel: str, broadcast_id: str
) -> Response:
    """Stop the broadcast: recipients not handed over yet are never sent."""
    number = row_id(broadcast_id)
    if channel not in display.CHANNEL_NAMES or number is None:
        return not_found(visit, "such broadcast")
    async with visit.db() as session:
        try:
            found = await broadcasts.get_broadcast(
                session, Channel(channel), visit.me.account_id, number
            )
        except NotFound:
            return not_found(visit, "such broadcast")
        try:
            await broadcasts.cancel(session, found)
            await commit_and_wake(session, None)
        except PlaticaError as problem:
            await session.rollback()
            return web.error_page(visit, problem.status_code, _("Not canceled"), problem.message)
    log.info("dashboard.broadcast_canceled", broadcast_id=number)
    return redirect(visit, f"/broadcasts/{channel}/{number}?notice=canceled")
