"""Templates from Twilio's Content API: what a content becomes (its text, its approval), read
through the SDK over real HTTP from FakeTwilio, and synced into an account's templates on
SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from twilio.rest.content.v1.content_and_approvals import ContentAndApprovalsInstance

from platica import db
from platica.config import Settings
from platica.logging import configure_logging
from platica.models import Template, TemplateApproval
from platica.outreach import content
from platica.outreach.content import (
    RemoteTemplate,
    SyncSummary,
    TwilioCredentialsRefused,
    TwilioNotConfigured,
    TwilioUnavailable,
    apply_templates,
    approval_of,
    body_of,
    fetch_templates,
    parse_content,
)
from tests.conftest import make_settings
from tests.factories import AUTH_TOKEN
from tests.fakes import FakeTwilio
from tests.logs import log_events
from tests.records import add_account, open_engine

PEDIDO = "Hola {{1}}, su pedido {{2}} está listo para recoger."
CITA = "Buenos días {{1}}, le recordamos su cita del {{2}}."
SID = "HX" + "ab" * 16


def instance(**payload: Any) -> ContentAndApprovalsInstance:
    """A content as the SDK builds it from Twilio's JSON."""
    values: dict[str, Any] = {
        "sid": SID,
        "friendly_name": "pedido_listo",
        "language": "es",
        "variables": {"1": "Ana", "2": "A-1043"},
        "types": {"twilio/text": {"body": PEDIDO}},
        "approval_requests": {"name": "pedido_listo", "status": "approved"},
    }
    values.update(payload)
    return ContentAndApprovalsInstance(None, values)


class TestApprovalOf:
    @pytest.mark.parametrize(
        ("status", "approval"),
        [
            ("approved", TemplateApproval.approved),
            ("APPROVED", TemplateApproval.approved),
            (" Approved ", TemplateApproval.approved),
            ("Pending", TemplateApproval.pending),
            ("received", TemplateApproval.received),
            ("REJECTED", TemplateApproval.rejected),
            ("paused", TemplateApproval.paused),
            ("Disabled", TemplateApproval.disabled),
            ("unsubmitted", TemplateApproval.unsubmitted),
            ("in_appeal", TemplateApproval.unknown),
            ("", TemplateApproval.unknown),
            (None, TemplateApproval.unknown),
            (42, TemplateApproval.unknown),
        ],
    )
    def test_status_spellings(self, status: object, approval: TemplateApproval) -> None:
        assert approval_of({"name": "x", "status": status}) == (approval, None)

    def test_no_status_key_is_unknown(self) -> None:
        assert approval_of({"name": "x", "category": "UTILITY"}) == (TemplateApproval.unknown, None)

    @pytest.mark.parametrize("requests", [None, {}, {"whatsapp": {}}])
    def test_never_submitted(self, requests: dict[str, Any] | None) -> None:
        assert approval_of(requests) == (TemplateApproval.unsubmitted, None)

    def test_nested_under_whatsapp(self) -> None:
        requests = {"whatsapp": {"status": "rejected", "rejection_reason": "Contenido promocional"}}
        assert approval_of(requests) == (TemplateApproval.rejected, "Contenido promocional")

    def test_empty_rejection_reason_is_none(self) -> None:
        requests = {"status": "approved", "rejection_reason": "  "}
        assert approval_of(requests) == (TemplateApproval.approved, None)


class TestBodyOf:
    def test_text_first_whatever_the_order(self) -> None:
        types = {
            "twilio/media": {"body": "Su factura", "media": ["https://e.example/f.pdf"]},
            "twilio/text": {"body": PEDIDO},
        }
        assert body_of(types) == PEDIDO

    def test_media_body(self) -> None:
        types = {"twilio/media": {"body": "Su factura {{1}}", "media": ["https://e.example/f"]}}
        assert body_of(types) == "Su factura {{1}}"

    def test_quick_reply_body(self) -> None:
        types = {
            "twilio/quick-reply": {
                "body": "¿Confirma su cita del {{1}}?",
                "actions": [{"title": "Sí", "id": "si"}, {"title": "No", "id": "no"}],
            }
        }
        assert body_of(types) == "¿Confirma su cita del {{1}}?"

    def test_a_card_without_body_gives_its_title(self) -> None:
        types = {"twilio/card": {"title": "Oferta de {{1}}", "actions": []}}
        assert body_of(types) == "Oferta de {{1}}"

    @pytest.mark.parametrize("types", [None, {}, {"twilio/location": {"latitude": 40.4}}])
    def test_no_text(self, types: dict[str, Any] | None) -> None:
        assert body_of(types) == ""


class TestParseContent:
    def test_an_approved_text(self) -> None:
        assert parse_content(instance()) == RemoteTemplate(
            sid=SID,
            name="pedido_listo",
            language="es",
            body=PEDIDO,
            variables={"1": "Ana", "2": "A-1043"},
            approval=TemplateApproval.approved,
            rejection_reason=None,
        )

    def test_missing_fields(self) -> None:
        parsed = parse_content(
            instance(friendly_name=None, language=None, variables=None, approval_requests=None)
        )
        assert parsed.name == SID
        assert parsed.language == ""
        assert parsed.variables == {}
        assert parsed.approval == TemplateApproval.unsubmitted

    def test_samples_become_text(self) -> None:
        assert parse_content(instance(variables={"1": 7, "fecha": None})).variables == {
            "1": "7",
            "fecha": "None",
        }


# -- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


@pytest.fixture
def settings_for(tmp_path: Path, fake: FakeTwilio) -> Callable[..., Settings]:
    def settings(database_url: str | None = None, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "TWILIO_API_BASE_URL": fake.url,
            "TWILIO_CONTENT_BASE_URL": fake.url,
            **overrides,
        }
        return make_settings(database_url or f"sqlite+aiosqlite:///{tmp_path}/x.db", **values)

    return settings


class TestFetchTemplates:
    async def test_every_page_through_the_sdk(
        self, fake: FakeTwilio, settings_for: Callable[..., Settings], monkeypatch: Any
    ) -> None:
        monkeypatch.setattr(content, "PAGE_SIZE", 2)
        sids = [fake.add_content(f"pedido_{n}", PEDIDO) for n in range(5)]

        fetched = await fetch_templates(settings_for())

        assert [template.sid for template in fetched] == sids
        assert fake.request_log.count(("GET", "/v1/ContentAndApprovals")) == 3
        assert fetched[0].body == PEDIDO
        assert fetched[0].variables == {"1": "muestra 1", "2": "muestra 2"}

    async def test_approvals_as_twilio_reports_them(
        self, fake: FakeTwilio, settings_for: Callable[..., Settings]
    ) -> None:
        fake.add_content("aprobada", PEDIDO, approval="APPROVED")
        fake.add_content("en_revision", PEDIDO, approval="Pending")
        fake.add_content("rechazada", CITA, approval="rejected", rejection_reason="Promocional")
        fake.add_content("borrador", CITA, approval=None)
        fake.add_content("rara", CITA, approval="in_appeal")

        fetched = await fetch_templates(settings_for())

        assert [(t.name, t.approval, t.rejection_reason) for t in fetched] == [
            ("aprobada", TemplateApproval.approved, None),
            ("en_revision", TemplateApproval.pending, None),
            ("rechazada", TemplateApproval.rejected, "Promocional"),
            ("borrador", TemplateApproval.unsubmitted, None),
            ("rara", TemplateApproval.unknown, None),
        ]

    async def test_not_configured(self, settings_for: Callable[..., Settings]) -> None:
        settings = settings_for(TWILIO_ACCOUNT_SID=None, TWILIO_AUTH_TOKEN=None)

        with pytest.raises(TwilioNotConfigured) as caught:
            await fetch_templates(settings)

        assert caught.value.status_code == 409
        assert "Twilio is not configured" in caught.value.message

    async def test_refused_credentials(
        self, fake: FakeTwilio, settings_for: Callable[..., Settings]
    ) -> None:
        fake.auth_token = "f" * 32  # Twilio no longer takes ours
        settings = settings_for()
        configure_logging(settings)

        with log_events() as logs, pytest.raises(TwilioCredentialsRefused) as caught:
            await fetch_templates(settings)

        assert caught.value.status_code == 502
        assert "refused the credentials (401)" in caught.value.message
        assert AUTH_TOKEN not in caught.value.message
        assert logs.named("templates.twilio_refused")
        assert AUTH_TOKEN not in repr(logs.events)

    @pytest.mark.parametrize("behaviour", ["content:500", "content:503", "content:429"])
    async def test_twilio_failing(
        self, fake: FakeTwilio, settings_for: Callable[..., Settings], behaviour: str
    ) -> None:
        fake.fail_next(behaviour)

        with pytest.raises(TwilioUnavailable) as caught:
            await fetch_templates(settings_for())

        assert caught.value.status_code == 502
        assert f"answered {behaviour.removeprefix('content:')}" in caught.value.message
        assert "try again" in caught.value.message

    async def test_unreachable(self, settings_for: Callable[..., Settings]) -> None:
        settings = settings_for(TWILIO_CONTENT_BASE_URL="http://127.0.0.1:9")

        with pytest.raises(TwilioUnavailable) as caught:
            await fetch_templates(settings)

        assert "could not be reached" in caught.value.message

    async def test_timeout(
        self, fake: FakeTwilio, settings_for: Callable[..., Settings], monkeypatch: Any
    ) -> None:
        monkeypatch.setattr(content, "CONTENT_TIMEOUT_SECONDS", 0.2)
        fake.fail_next("content:timeout")

        with pytest.raises(TwilioUnavailable) as caught:
            await fetch_templates(settings_for())

        assert "could not be reached (TimeoutError)" in caught.value.message


# -- synced into the database --------------------------------------------------------------------


async def templates_of(session: AsyncSession, account_id: uuid.UUID) -> dict[str, Template]:
    rows = await session.scalars(select(Template).where(Template.account_id == account_id))
    return {row.sid: row for row in rows}


class TestSync:
    async def test_added_updated_removed_and_manual_kept(
        self, database_url: str, fake: FakeTwilio, settings_for: Callable[..., Settings]
    ) -> None:
        settings = settings_for(database_url)
        pedido = fake.add_content("pedido_listo", PEDIDO, approval="pending")
        cita = fake.add_content("recordatorio_cita", CITA)
        async with open_engine(database_url) as engine:
            sessions = db.create_sessionmaker(engine)
            async with db.session(sessions) as session:
                account = await add_account(session)
                other = await add_account(session, "Farmacia")
                session.add(
                    Template(
                        account_id=account.id,
                        sid="HX" + "cd" * 16,
                        name="a_mano",
                        language="es",
                        body="Gracias por su compra, {{1}}.",
                        approval=TemplateApproval.approved,
                        source="manual",
                    )
                )
                await session.flush()
                first = await apply_templates(session, account.id, await fetch_templates(settings))

            fake.remove_content(cita)
            fake.remove_content(pedido)
            pedido_again = fake.add_content("pedido_listo", PEDIDO, approval="approved", sid=pedido)
            nuevo = fake.add_content("encuesta", "¿Qué tal le atendimos, {{1}}?")
            async with db.session(sessions) as session:
                second = await apply_templates(session, account.id, await fetch_templates(settings))
            async with db.session(sessions) as session:
                third = await apply_templates(session, account.id, await fetch_templates(settings))
                rows = await templates_of(session, account.id)
                others = await templates_of(session, other.id)

        assert first == SyncSummary(added=2, updated=0, removed=0, total=3)
        assert second == SyncSummary(added=1, updated=1, removed=1, total=3)
        assert third == SyncSummary(added=0, updated=0, removed=0, total=3)
        assert set(rows) == {pedido_again, nuevo, "HX" + "cd" * 16}
        assert rows[pedido].approval == TemplateApproval.approved
        assert rows[pedido].body == PEDIDO
        assert rows[pedido].variables == {"1": "muestra 1", "2": "muestra 2"}
        assert rows[pedido].source == "twilio"
        assert rows[pedido].synced_at is not None
        assert rows["HX" + "cd" * 16].source == "manual"
        assert rows["HX" + "cd" * 16].synced_at is None
        assert others == {}

    async def test_a_manual_template_twilio_lists_becomes_synced(
        self, database_url: str, fake: FakeTwilio, settings_for: Callable[..., Settings]
    ) -> None:
        settings = settings_for(database_url)
        sid = fake.add_content("pedido_listo", PEDIDO, approval="rejected", rejection_reason="x")
        async with open_engine(database_url) as engine:
            sessions = db.create_sessionmaker(engine)
            async with db.session(sessions) as session:
                account = await add_account(session)
                session.add(
                    Template(
                        account_id=account.id,
                        sid=sid,
                        name="pedido",
                        body=PEDIDO,
                        approval=TemplateApproval.approved,
                        source="manual",
                    )
                )
                await session.flush()
                summary = await apply_templates(
                    session, account.id, await fetch_templates(settings)
                )
            fake.remove_content(sid)
            async with db.session(sessions) as session:
                gone = await apply_templates(session, account.id, await fetch_templates(settings))
                rows = await templates_of(session, account.id)

        assert summary == SyncSummary(added=0, updated=1, removed=0, total=1)
        assert gone == SyncSummary(added=0, updated=0, removed=1, total=0)
        assert rows == {}
