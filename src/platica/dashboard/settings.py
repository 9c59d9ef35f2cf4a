"""The settings page: each channel's configuration, validated by the rules of
PUT /api/{channel}/config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError
from starlette.responses import Response

from platica import texts
from platica.conversations import operators
from platica.dashboard import display
from platica.dashboard.i18n import N_
from platica.dashboard.web import OperatorVisit, PostedForm, Visit, not_found, redirect, render
from platica.errors import NotFound
from platica.http import first
from platica.jobs.runner import commit_and_wake
from platica.logging import get_logger
from platica.models import Channel, ChannelConfig, utcnow
from platica.schemas import ChannelConfigUpdate

log = get_logger(__name__)
router = APIRouter(include_in_schema=False)

CONFIG_FIELDS = (
    "system_prompt",
    "openai_model",
    "max_tokens",
    "temperature",
    "context_messages",
    "debounce_seconds",
    "sms_max_chars",
    "fallback_message",
    "help_message",
    "handoff_timeout_minutes",
    "daily_token_budget",
    "busy_message",
    "language",
    "broadcast_mps",
    "opt_out_message",
    "opt_in_message",
    "offline_message",
    "handoff_message",
)
# Fields a page opened before they existed does not post: left as they are (and the
# confirmations, which the SMS form leaves out: Twilio answers STOP and START on SMS).
NEWER_FIELDS = (
    "language",
    "broadcast_mps",
    "opt_out_message",
    "opt_in_message",
    "offline_message",
    "handoff_message",
)
# Ticked: "on"; left out of the form when not.
CHECKBOXES = ("ai_enabled", "vision", "delete_media_after_use")
LANGUAGES = {"es": N_("Spanish (es)"), "en": N_("English (en)")}


def _config_values(config: ChannelConfig) -> dict[str, Any]:
    values = {name: display.number(getattr(config, name)) for name in CONFIG_FIELDS}
    values["openai_model"] = config.openai_model or ""
    # The texts in use: the channel's own, or the built-in ones in its language.
    values.update({name: texts.text_for(config, name) for name in texts.TEXT_NAMES})
    values["daily_token_budget"] = config.daily_token_budget or ""
    for name in CHECKBOXES:
        values[name] = getattr(config, name)
    return values


async def channel_configs(visit: Visit) -> dict[str, ChannelConfig | None]:
    """The chosen account's config of each channel (None: no number there, or no account)."""
    account_id = visit.me.account_id
    configs: dict[str, ChannelConfig | None] = {}
    async with visit.db() as session:
        for channel in Channel:
            try:
                configs[channel.value] = (
                    await operators.get_config(session, channel, account_id)
                    if account_id is not None
                    else None
                )
            except NotFound:
                configs[channel.value] = None
    return configs


def _settings_forms(
    configs: Mapping[str, ChannelConfig | None],
    posted: str | None = None,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    forms = []
    for channel, config in configs.items():
        form: dict[str, Any] = {
            "channel": channel,
            "name": display.CHANNEL_NAMES[channel],
            "config": config,
            "errors": {},
        }
        if config is not None:
            form["current"] = _config_values(config)
            form["customized"] = texts.customized(config)
            form["phone_number"] = config.phone_number
            if channel == posted and values is not None:
                form["current"] = values
                form["errors"] = errors or {}
        forms.append(form)
    return forms


@router.get("/settings")
async def settings_page(visit: OperatorVisit) -> Response:
    """Each channel's settings, for editing."""
    configs = await channel_configs(visit)
    saved = visit.request.query_params.get("saved")
    return render(
        visit,
        "settings.html",
        "settings",
        forms=_settings_forms(configs),
        saved=display.CHANNEL_NAMES.get(saved or ""),
        default_model=visit.state.settings.OPENAI_MODEL,
        today=utcnow().date(),
        languages=LANGUAGES,
    )


@router.post("/settings/{channel}")
async def save_settings(visit: OperatorVisit, form: PostedForm, channel: str) -> Response:
    """Validate and save one channel's settings (the rules of PUT /api/{channel}/config)."""
    if channel not in display.CHANNEL_NAMES or visit.me.account_id is None:
        return not_found(visit, "such channel")
    values: dict[str, Any] = {}
    for name in CONFIG_FIELDS:
        value = (first(form, name) or "").replace("\r\n", "\n")
        values[name] = value
    for name in CHECKBOXES:
        values[name] = first(form, name) == "on"
    update_values: dict[str, Any] = {
        **values,
        # Empty: the server's default model; no budget.
        "openai_model": values["openai_model"] or None,
        "daily_token_budget": values["daily_token_budget"].strip() or None,
    }
    for name in texts.TEXT_NAMES:
        if texts.is_built_in(name, values[name]):
            # Shown and posted back as it was: it stays built in, following the language.
            update_values[name] = None
    for name in NEWER_FIELDS:
        if first(form, name) is None:
            # A page opened before the field existed (they stay open for hours): kept as it is.
            del update_values[name]
    errors: dict[str, str] = {}
    try:
        update = ChannelConfigUpdate.model_validate(update_values)
    except ValidationError as invalid:
        errors = display.field_errors(invalid)
    if not errors:
        async with visit.db() as session:
            try:
                config = await operators.get_config(session, Channel(channel), visit.me.account_id)
            except NotFound:
                return not_found(visit, "such channel")
            for name in update.model_fields_set:
                setattr(config, name, getattr(update, name))
            await commit_and_wake(session, None)
        log.info("dashboard.settings_saved", channel=channel)
        return redirect(visit, f"/settings?saved={channel}#{channel}")
    configs = await channel_configs(visit)
    return render(
        visit,
        "settings.html",
        "settings",
        status_code=422,
        forms=_settings_forms(configs, channel, values, errors),
        saved=None,
        default_model=visit.state.settings.OPENAI_MODEL,
        today=utcnow().date(),
        languages=LANGUAGES,
    )
