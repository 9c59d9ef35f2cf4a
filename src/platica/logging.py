"""Structured logging with structlog: console in development, JSON in production, phone numbers masked."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

from platica.config import Settings

# E.164 numbers and bare digit runs long enough to be one, with or without the "whatsapp:" prefix.
# Not digit groups joined by hyphens or dots: a UUID's last group may be all digits.
PHONE = re.compile(r"(?<![\w+.-])(\+?)(\d{2,4})(\d{3,9})(\d{2})(?![\w-])")


def mask_phone(text: str) -> str:
    """`+14155238886` -> `+1415*****86`: enough to tell numbers apart, not enough to call one."""
    return PHONE.sub(lambda m: m[1] + m[2] + "*" * len(m[3]) + m[4], text)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_phone(value)
    if isinstance(value, dict):
        return {key: _mask_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(item) for item in value]
    return value


def mask_phone_numbers(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: masks phone numbers in every value of the event."""
    return {key: _mask_value(value) for key, value in event_dict.items()}


def configure_logging(settings: Settings) -> None:
    """Route structlog and the standard library (uvicorn, alembic) through one renderer."""
    level = logging.getLevelName(settings.log_level)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # The traceback becomes text (plain: no local variables, which would show secrets and
        # numbers) before the masking, so an exception's message is masked like the rest. For
        # the standard library's records too: foreign_pre_chain gets their exc_info.
        structlog.processors.format_exc_info,
        mask_phone_numbers,
    ]
    renderer: Any
    if settings.LOG_FORMAT == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    structlog.configure(
        # A disabled level stops at the first processor instead of running them all.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    # No renderer here prints a record's source line, thread or process, so the standard
    # library need not look them up for every record (its documented optimization).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Twilio's client logs full request URLs and bodies (phone numbers) at INFO; the others
    # log a line per HTTP call that our own reply.* events already tell.
    for name in ("twilio", "httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    # Every webhook has its own event (webhook.accepted, ...) and a webhook_logs row.
    logging.getLogger("uvicorn.access").addFilter(_not_a_webhook)
    logging.getLogger("alembic.runtime.plugins").setLevel(max(level, logging.WARNING))


def _not_a_webhook(record: logging.LogRecord) -> bool:
    """uvicorn's access line, except for webhooks (its arguments: client, method, path, ...)."""
    args = record.args
    return not (isinstance(args, tuple) and len(args) > 2 and str(args[2]).startswith("/webhook/"))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
