"""Fixtures for the templates' API tests: a live server with the fake Twilio serving the Content
API too (tests/api's Api, its helpers and its second account)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.api.conftest import ADMIN_TOKEN, JWT_SECRET, Api, Tenant
from tests.conftest import LiveServer
from tests.factories import SMS_NUMBER, WHATSAPP_NUMBER
from tests.records import default_account_key
from tests.stack import live_stack


@pytest.fixture
def api(database_url: str, live_server: Callable[..., LiveServer]) -> Iterator[Api]:
    """Plática on a live server, TWILIO_CONTENT_BASE_URL at the fake Twilio; account A is the
    default account."""
    with live_stack(
        database_url, live_server, PLATICA_ADMIN_TOKEN=ADMIN_TOKEN, SUPABASE_JWT_SECRET=JWT_SECRET
    ) as stack:
        account_id, key = default_account_key(database_url)
        tenant = Tenant(account_id, key, SMS_NUMBER, WHATSAPP_NUMBER)
        parts = (stack.server, stack.openai, stack.twilio, stack.database, stack.client)
        yield Api(*parts, database_url, tenant)
