"""The phone simulator: write as a test contact; the message goes through the real pipeline, in
process, and its reply appears on the page, never sent to a phone."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
from fastapi import APIRouter
from starlette.responses import Response

from platica.accounts import DEMO_NUMBERS
from platica.channels.forms import inbound_form
from platica.channels.inbound import Recorded, WebhookEntry
from platica.channels.parsing import parse_inbound
from platica.channels.webhook import receive_inbound
from platica.config import E164
from platica.dashboard import display
from platica.dashboard.conversation import load_thread
from platica.dashboard.i18n import gettext
from platica.dashboard.settings import channel_configs
from platica.dashboard.web import (
    OperatorVisit,
    PostedForm,
    Visit,
    embed,
    live,
    not_found,
    redirect,
    render,
)
from platica.errors import PlaticaError
from platica.http import first
from platica.logging import get_logger
from platica.models import Channel

log = get_logger(__name__)
router = APIRouter(include_in_schema=False)

# How often the test phone asks for the reply (the server answers 204 while there is none).
SIMULATOR_POLL_SECONDS = 1.0
SIMULATOR_FROM = "+15550100001"


async def _record_simulated(visit: Visit, channel: Channel, form: dict[str, str]) -> Recorded:
    """Record the form as the webhook records a message, in-process (never over HTTP: no
    request is built from what this request's Host header says), marked simulated, so that
    what answers it goes through the dry-run sender and never reaches a real phone."""
    inbound = replace(parse_inbound({k: [v] for k, v in form.items()}, channel), simulated=True)
    entry = WebhookEntry(endpoint=channel.value, params={k: [v] for k, v in form.items()})
    return await receive_inbound(visit.state, inbound, entry)


async def _simulator_thread(visit: Visit, key: str | None) -> dict[str, Any] | None:
    if not key or "/" not in key:
        return None
    channel, _, ident = key.partition("/")
    return await load_thread(visit, channel, ident)


@router.get("/simulator")
async def simulator_page(visit: OperatorVisit) -> Response:
    """Write as a test contact; the message goes through the real pipeline and its reply,
    never sent to a phone, appears."""
    params = visit.request.query_params
    thread = await _simulator_thread(visit, params.get("conversation"))
    if params.get("fragment") == "phone":
        if thread is None:
            return not_found(visit, "such conversation")
        return live(visit, "_phone.html", **_phone_options(visit, thread), **thread)
    channel = params.get("channel", "")
    values = {
        "channel": channel if channel in display.CHANNEL_NAMES else Channel.whatsapp.value,
        "sender": params.get("from") or SIMULATOR_FROM,
    }
    return await _simulator_response(visit, values, thread)


def _phone_options(visit: Visit, thread: dict[str, Any]) -> dict[str, Any]:
    query = httpx.QueryParams({"conversation": thread["row"]["key"], "fragment": "phone"})
    return {
        "live_id": "phone",
        "every": SIMULATOR_POLL_SECONDS,
        "poll_url": f"{visit.root}/simulator?{query}",
    }


async def _simulator_response(
    visit: Visit,
    values: dict[str, str],
    thread: dict[str, Any] | None,
    *,
    status_code: int = 200,
    errors: dict[str, str] | None = None,
) -> Response:
    configs = await channel_configs(visit)
    numbers = {channel: config.phone_number for channel, config in configs.items() if config}
    phone = None
    if thread is not None:
        phone = embed(visit, "_phone.html", **_phone_options(visit, thread), **thread)
    return render(
        visit,
        "simulator.html",
        "simulator",
        status_code=status_code,
        values=values,
        errors=errors or {},
        numbers=numbers,
        thread=thread,
        live=phone,
        dry_run=not visit.state.settings.twilio_configured,
        demo=DEMO_NUMBERS,
    )


@router.post("/simulator")
async def simulate(visit: OperatorVisit, form: PostedForm) -> Response:
    """Record a test message as the webhook would (in-process); its reply is never sent."""
    channel_name = first(form, "channel") or ""
    sender = (first(form, "from") or "").strip()
    body = (first(form, "body") or "").replace("\r\n", "\n").strip()
    values = {"channel": channel_name, "sender": sender, "body": body}
    errors: dict[str, str] = {}
    if channel_name not in display.CHANNEL_NAMES:
        errors["channel"] = gettext("choose WhatsApp or SMS")
    if not E164.match(sender):
        errors["from"] = gettext("must be an E.164 number like +15550100001")
    if not body:
        errors["body"] = gettext("write a message first")
    elif len(body) > 1600:
        errors["body"] = gettext("must be at most 1600 characters")
    configs = await channel_configs(visit)
    channel = Channel(channel_name) if channel_name in display.CHANNEL_NAMES else None
    config = configs.get(channel_name) if channel else None
    if channel is not None and config is None:
        errors["channel"] = (
            gettext("choose an account first (in the header)")
            if visit.me.account_id is None
            else gettext("this account has no %(channel)s number")
            % {"channel": display.CHANNEL_NAMES[channel_name]}
        )
    if errors or channel is None or config is None:
        return await _simulator_response(visit, values, None, status_code=422, errors=errors)
    twilio_form = inbound_form(
        channel,
        sender,
        config.phone_number,
        body,
        account_sid=visit.state.settings.TWILIO_ACCOUNT_SID,
    )
    try:
        recorded = await _record_simulated(visit, channel, twilio_form)
    except PlaticaError as error:
        # The form is ours, so only a number that changed hands meanwhile gets here.
        return await _simulator_response(
            visit, values, None, status_code=error.status_code, errors={"form": error.message}
        )
    if recorded.conversation_id is None:
        return await _simulator_response(
            visit,
            values,
            None,
            status_code=502,
            errors={"form": gettext("the message was not stored")},
        )
    log.info("dashboard.simulated", channel=channel.value, account_id=str(recorded.account_id))
    query = httpx.QueryParams(
        {
            "conversation": f"{channel.value}/{recorded.conversation_id}",
            "channel": channel.value,
            "from": sender,
        }
    )
    return redirect(visit, f"/simulator?{query}")
