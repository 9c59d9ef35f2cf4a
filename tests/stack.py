"""Plática end to end: a live server with the fake OpenAI and the fake Twilio (posting status
callbacks) behind it, spoken to over real HTTP. The reply-loop, metrics, rate-limit and API tests
build theirs here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from tests.conftest import Database, LiveServer, make_settings
from tests.factories import inbound_form, post_signed
from tests.fakes import FakeOpenAI, FakeTwilio

ADMIN_TOKEN = "admin-5e1d9c3b7a2f4e6d8c0b1a29"


@dataclass
class Stack:
    server: LiveServer
    openai: FakeOpenAI
    twilio: FakeTwilio
    database: Database
    client: httpx.Client

    def send(self, channel: str = "sms", **form: Any) -> dict[str, str]:
        """A signed inbound webhook (factories.inbound_form(channel, **form)), accepted."""
        data = inbound_form(channel, **form)
        response = post_signed(self.client, self.server.url, f"/webhook/{channel}", data)
        assert response.status_code == 200, response.text
        return data

    def configure(self, **values: Any) -> None:
        """Change every channel config of every account (read afresh by each reply task)."""
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        self.database.execute(f"UPDATE channel_configs SET {assignments}", **values)

    def sent_to(self, number: str) -> list[dict[str, Any]]:
        return [m for m in self.twilio.sent if m["to"].removeprefix("whatsapp:") == number]

    def inbound_states(self) -> list[str]:
        rows = self.database.rows(
            "SELECT reply_state FROM messages WHERE direction = 'inbound' ORDER BY id"
        )
        return [r.reply_state for r in rows]

    def settled(self) -> bool:
        """Nothing pending: every inbound handled, every outbound past sending."""
        return not self.database.scalar(
            "SELECT count(*) FROM messages WHERE reply_state = 'pending'"
            " OR (direction = 'outbound' AND status IN ('pending', 'sending'))"
        )

    def outbound(self) -> list[Any]:
        return self.database.rows(
            "SELECT id, author, body, status, twilio_sid, reply_to_id, part, error_code,"
            " error_message, segments, encoding, model, prompt_tokens, completion_tokens,"
            " latency_ms, attempts FROM messages WHERE direction = 'outbound' ORDER BY id"
        )


@contextmanager
def live_stack(
    database_url: str, live_server: Callable[..., LiveServer], **overrides: Any
) -> Iterator[Stack]:
    """A live server with `overrides` over the test settings (an admin token, the fakes' URLs),
    the fakes behind it, debounce 0."""
    with FakeOpenAI() as openai, FakeTwilio(callbacks=True) as twilio:
        openai.retry_after = "0.01"
        values: dict[str, Any] = {
            "OPENAI_BASE_URL": openai.url,
            "OPENAI_API_KEY": "sk-local-0123456789",
            "TWILIO_API_BASE_URL": twilio.url,
            "TWILIO_CONTENT_BASE_URL": twilio.url,
            "PLATICA_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        server = live_server(make_settings(database_url, **{**values, **overrides}))
        database = Database(database_url)
        try:
            with httpx.Client(timeout=30) as client:
                created = Stack(server, openai, twilio, database, client)
                created.configure(debounce_seconds=0)
                yield created
        finally:
            database.engine.dispose()
