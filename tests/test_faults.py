"""Nothing lost, nothing sent twice: `platica serve` processes killed mid-load (mid-fetch or
mid-transcription of a voice note, mid-broadcast), and two of them sharing one PostgreSQL (and one
broadcast), against the fake LLM and the fake Twilio over real HTTP."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from bench.checks import busiest_window

from platica.media.store import MAX_ATTEMPTS
from platica.models import Account, Contact, Conversation, Template, TemplateApproval
from platica.replies.reading import GAVE_UP
from tests.conftest import Database, free_port, postgres_only
from tests.factories import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    CONTACT,
    SMS_NUMBER,
    WHATSAPP_NUMBER,
    inbound_form,
    post_signed,
)
from tests.fakes import FakeOpenAI, FakeTwilio
from tests.media.samples import ogg_opus
from tests.polling import wait_for


class ServerProcess:
    """`python -m platica serve` in a child process, as an operator would run it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Where Twilio reaches it (required with Twilio credentials): its own URL, unless set.
        self.env = {"PUBLIC_BASE_URL": self.url, **env}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *options: str) -> ServerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "platica", "serve", "--port", str(self.port), *options],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, "the server to start", seconds=60)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine dies. On PostgreSQL the worker is
        a child process that the kernel kills with it: waited for too, so that nothing of this
        server runs once this returns."""
        assert self.process is not None
        worker_children = children_of(self.process.pid)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        wait_for(lambda: not any(map(alive, worker_children)), "the worker to die with its server")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def children_of(pid: int) -> list[int]:
    """The process's children (Linux: /proc/PID/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def alive(pid: int) -> bool:
    """Whether the process still runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def fakes() -> Iterator[tuple[FakeOpenAI, FakeTwilio]]:
    with FakeOpenAI(latency=1.0) as openai, FakeTwilio(latency=0.1) as twilio:
        yield openai, twilio


@pytest.fixture
def server_env(database_url, fakes, tmp_path) -> dict[str, str]:
    openai, twilio = fakes
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "OPENAI_"))}
    env.update(
        DATABASE_URL=database_url,
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_PHONE_NUMBER=SMS_NUMBER,
        TWILIO_API_BASE_URL=twilio.url,
        OPENAI_BASE_URL=openai.url,
        OPENAI_API_KEY="sk-local-0123456789",
        LOG_LEVEL="INFO",
    )
    env.pop("PUBLIC_BASE_URL", None)
    return env


@pytest.fixture
def servers(server_env, tmp_path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def senders(count: int) -> list[str]:
    return [f"+3460000{index:04d}" for index in range(count)]


def post_all(
    client: httpx.Client, targets: list[ServerProcess], forms: list[dict[str, str]]
) -> None:
    for index, form in enumerate(forms):
        target = targets[index % len(targets)]
        response = post_signed(client, target.url, "/webhook/sms", form)
        assert response.status_code == 200, response.text


def settled(database: Database, expected_inbound: int) -> bool:
    inbound = database.scalar("SELECT count(*) FROM messages WHERE direction = 'inbound'")
    unfinished = database.scalar(
        "SELECT count(*) FROM messages WHERE reply_state = 'pending'"
        " OR (direction = 'outbound' AND status IN ('pending', 'sending'))"
    )
    return bool(inbound == expected_inbound and unfinished == 0)


class TestCrashRecovery:
    def test_sigkill_mid_load_then_restart_answers_each_message_once(
        self, database_url, database, server_env, servers, fakes, tmp_path
    ):
        _openai, twilio = fakes
        # Four replies at a time (1 s each): the kill lands with most of the 30 still to answer.
        server_env["WORKER_CONCURRENCY"] = "4"
        first = ServerProcess(server_env, tmp_path / "first.log").start()
        servers.append(first)
        database.execute("UPDATE channel_configs SET debounce_seconds = 0")
        numbers = senders(30)
        forms = [inbound_form(sender=number, body=f"hola {number}") for number in numbers]

        with httpx.Client(timeout=30) as client:
            post_all(client, [first], forms)
        # Kill while LLM calls (1 s each) are in flight and some replies are out.
        wait_for(lambda: len(twilio.sent) >= 3, "the first replies")
        first.kill()
        sent_before_restart = len(twilio.sent)
        assert sent_before_restart < len(numbers), "the kill came too late to prove anything"

        second = ServerProcess(server_env, tmp_path / "second.log").start()
        servers.append(second)
        wait_for(lambda: settled(database, len(numbers)), "every message answered", seconds=90)

        per_recipient = Counter(message["to"] for message in twilio.sent)
        assert sorted(per_recipient) == sorted(numbers)
        assert set(per_recipient.values()) == {1}, "a reply was sent twice or not at all"
        replies = database.rows(
            "SELECT twilio_sid, status FROM messages WHERE direction = 'outbound'"
        )
        assert len(replies) == len(numbers)
        assert {r.twilio_sid for r in replies} == {m["sid"] for m in twilio.sent}

    def test_kill_during_a_hanging_twilio_send_does_not_send_twice(
        self, database_url, database, server_env, servers, fakes, tmp_path
    ):
        """Twilio accepted the message but the answer never came back before the kill."""
        openai, twilio = fakes
        openai.latency = 0
        twilio.hang_seconds = 30
        twilio.fail_next("timeout")
        first = ServerProcess(server_env, tmp_path / "first.log").start()
        servers.append(first)
        database.execute("UPDATE channel_configs SET debounce_seconds = 0")

        with httpx.Client(timeout=30) as client:
            post_all(client, [first], [inbound_form(body="hola")])
        wait_for(lambda: len(twilio.sent) == 1, "Twilio to accept the message")
        first.kill()
        assert database.scalar("SELECT status FROM messages WHERE direction = 'outbound'") == (
            "sending"
        )

        second = ServerProcess(server_env, tmp_path / "second.log").start()
        servers.append(second)
        wait_for(lambda: settled(database, 1), "the reply to be reconciled", seconds=60)

        assert len(twilio.sent) == 1
        sid = database.scalar("SELECT twilio_sid FROM messages WHERE direction = 'outbound'")
        assert sid == twilio.sent[0]["sid"]
        assert "reply.recovered" in (tmp_path / "second.log").read_text()


VOICE_NOTE = "Buenas, ¿me confirman el pedido de las seis?"


def send_voice_note(
    client: httpx.Client, server: ServerProcess, twilio: FakeTwilio, note: bytes
) -> None:
    """A WhatsApp voice note from CONTACT, its media registered with the fake Twilio, posted to
    the server's webhook (and acknowledged)."""
    url = twilio.add_media(note, "audio/ogg")
    form = inbound_form(
        "whatsapp",
        body="",
        NumMedia="1",
        MediaUrl0=url,
        MediaContentType0="audio/ogg",
        MessageType="audio",
    )
    response = post_signed(client, server.url, "/webhook/whatsapp", form)
    assert response.status_code == 200, response.text


def media_row(database: Database) -> Any:
    """The one media row: state, attempts, text, error, kept (its bytes are stored)."""
    [row] = database.rows(
        "SELECT state, attempts, text, error, content IS NOT NULL AS kept FROM media"
    )
    return row


def leases_lapsed(database: Database) -> bool:
    """Whether no conversation's lease is live any more (a killed worker's lapses 15 s after
    its last renewal): a server started now takes them at once, in its start-up sweep."""
    with database.engine.connect() as connection:
        expiries = connection.execute(sa.select(Conversation.lease_expires_at)).scalars().all()
    now = datetime.now(UTC)
    return all(expires is None or expires < now for expires in expiries)


def answered_once(database: Database, twilio: FakeTwilio) -> None:
    """One reply, to the contact on WhatsApp, stored once with the SID Twilio gave it; the
    voice note's message answered."""
    assert [m["to"] for m in twilio.sent] == [f"whatsapp:{CONTACT}"]
    replies = database.rows("SELECT twilio_sid FROM messages WHERE direction = 'outbound'")
    assert [r.twilio_sid for r in replies] == [twilio.sent[0]["sid"]]
    assert database.scalar("SELECT reply_state FROM messages WHERE direction = 'inbound'") == (
        "answered"
    )


class TestMediaCrashRecovery:
    """A voice note's reply task killed (SIGKILL) while it reads the note: every try is counted
    before it starts, the next run carries on from what was stored (fetching the note again only
    if its bytes were not kept), and the message is answered once.

    The server is restarted once the dead worker's lease (15 s) has lapsed, so that its start-up
    sweep takes the conversation at once (the periodic sweep would, 30 s after the message):
    each crash test takes some 20 s, so the mid-fetch one runs on SQLite and the
    mid-transcription one on PostgreSQL."""

    @pytest.fixture
    def media_env(self, server_env, fakes) -> dict[str, str]:
        openai, _twilio = fakes
        openai.latency = 0
        return {**server_env, "TWILIO_WHATSAPP_NUMBER": WHATSAPP_NUMBER}

    def start(self, env: dict[str, str], log_path: Path, servers, *options: str) -> ServerProcess:
        server = ServerProcess(env, log_path).start(*options)
        servers.append(server)
        return server

    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
    def test_killed_mid_fetch_the_note_is_fetched_again_and_answered_once(
        self, database, media_env, servers, fakes, tmp_path
    ):
        """SQLite. The storage host trickles the note (64 bytes every 0.5 s): the kill lands
        with part of the body read and nothing stored."""
        openai, twilio = fakes
        storage = twilio.media_storage
        storage.chunk_size, storage.chunk_seconds = 64, 0.5
        note = ogg_opus(5.0)
        openai.transcribe_as(note, VOICE_NOTE)
        first = self.start(media_env, tmp_path / "first.log", servers)
        database.execute("UPDATE channel_configs SET debounce_seconds = 0")

        with httpx.Client(timeout=30) as client:
            send_voice_note(client, first, twilio, note)

        def body_half_read() -> list[dict[str, Any]]:
            return [
                r
                for r in storage.requests
                if r["status"] == 200 and 0 < r["bytes_sent"] < len(note) and not r["completed"]
            ]

        [cut] = wait_for(body_half_read, "the note's body to be arriving")
        first.kill()
        # Killed mid-body (the next 64 bytes were half a second away), with the try counted
        # and nothing kept, transcribed or sent.
        assert 0 < cut["bytes_sent"] < len(note)
        row = media_row(database)
        assert (row.state, row.attempts, row.kept) == ("pending", 1, False)
        assert not openai.transcriptions
        assert not twilio.sent

        storage.chunk_seconds = 0
        wait_for(lambda: leases_lapsed(database), "the dead worker's lease to lapse", seconds=30)
        self.start(media_env, tmp_path / "second.log", servers)
        wait_for(lambda: settled(database, 1) and twilio.sent, "the reply", seconds=30)

        answered_once(database, twilio)
        assert VOICE_NOTE in twilio.sent[0]["body"]  # the fake LLM echoes what it was told
        row = media_row(database)
        assert (row.state, row.text, row.error, row.attempts) == (
            "understood",
            VOICE_NOTE,
            None,
            2,
        )
        # Fetched again, whole this time; transcribed once.
        _cut_short, second_get = storage.requests
        assert second_get["completed"]
        assert second_get["bytes_sent"] == len(note)
        assert [r["status"] for r in twilio.media_requests] == [307, 307]
        assert len(openai.transcriptions) == 1

    @pytest.mark.parametrize(
        "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
    )
    def test_killed_mid_transcription_the_kept_note_is_not_fetched_again(
        self, database, media_env, servers, fakes, tmp_path
    ):
        """PostgreSQL. The first transcription hangs (the fake answers after 120 s): the kill
        lands with the note fetched and kept, and its transcription asked for."""
        openai, twilio = fakes
        openai.hang_seconds = 120
        openai.fail_next("transcription_timeout")
        note = ogg_opus(5.0)
        openai.transcribe_as(note, VOICE_NOTE)
        first = self.start(media_env, tmp_path / "first.log", servers)
        database.execute("UPDATE channel_configs SET debounce_seconds = 0")

        with httpx.Client(timeout=30) as client:
            send_voice_note(client, first, twilio, note)
        wait_for(lambda: openai.transcriptions, "the transcription to be asked for")
        first.kill()
        row = media_row(database)
        assert (row.state, row.attempts, row.kept) == ("fetched", 1, True)
        assert openai.pending_failures == []  # the hanging answer was the one asked for
        assert not openai.requests  # no chat completion yet
        assert not twilio.sent

        wait_for(lambda: leases_lapsed(database), "the dead worker's lease to lapse", seconds=30)
        self.start(media_env, tmp_path / "second.log", servers)
        wait_for(lambda: settled(database, 1) and twilio.sent, "the reply", seconds=30)

        answered_once(database, twilio)
        assert VOICE_NOTE in twilio.sent[0]["body"]
        row = media_row(database)
        assert (row.state, row.text, row.error, row.attempts) == (
            "understood",
            VOICE_NOTE,
            None,
            2,
        )
        # The kept bytes were transcribed: the storage host saw one GET, Twilio one.
        [get] = twilio.media_storage.requests
        assert get["completed"]
        assert [r["method"] for r in twilio.media_requests] == ["GET"]
        first_try, second_try = openai.transcriptions
        assert first_try["sha256"] == second_try["sha256"] == hashlib.sha256(note).hexdigest()

    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
    def test_a_note_that_keeps_crashing_its_task_is_given_up_and_answered(
        self, database, media_env, servers, fakes, tmp_path
    ):
        """SQLite, lighter: no crash loop (each crash costs a lease's 15 s). The note is stored
        by a server without a worker, its row then left as MAX_ATTEMPTS runs that each died
        reading it leave it (each try counted before it starts, as the tests above show); the
        next run gives it up without fetching it, and the reply still goes out, once."""
        openai, twilio = fakes
        api = self.start(media_env, tmp_path / "api.log", servers, "--no-worker")
        database.execute("UPDATE channel_configs SET debounce_seconds = 0")
        with httpx.Client(timeout=30) as client:
            send_voice_note(client, api, twilio, ogg_opus(2.0))
        api.stop()
        row = media_row(database)
        assert (row.state, row.attempts) == ("pending", 0)
        database.execute("UPDATE media SET attempts = :tries", tries=MAX_ATTEMPTS)

        self.start(media_env, tmp_path / "worker.log", servers)
        wait_for(lambda: settled(database, 1) and twilio.sent, "the reply", seconds=30)

        answered_once(database, twilio)
        row = media_row(database)
        assert (row.state, row.error, row.attempts) == ("failed", GAVE_UP, MAX_ATTEMPTS + 1)
        assert not twilio.media_requests
        assert not twilio.media_storage.requests
        assert not openai.transcriptions
        [request] = openai.requests
        users = [m["content"] for m in request["messages"] if m["role"] == "user"]
        assert users[-1] == "[voice note that could not be transcribed]"


# --- Broadcasts -----------------------------------------------------------------------------

ADMIN_TOKEN = "admin-token-for-the-fault-tests-0123456789"
TEMPLATE_SID = "HX" + "0123456789abcdef" * 2
TEMPLATE_BODY = "Hola {{1}}, tu pedido {{2}} está listo"
# The bound on the send rate Twilio sees: over any PACE_WINDOW_SECONDS, at most PACE_SLACK times
# the channel's broadcast_mps.
PACE_WINDOW_SECONDS = 5.0
PACE_SLACK = 1.10
# A batch's DEBUG log line: how many recipients it handed over.
HANDED = re.compile(r"broadcast\.batch\b.*?\bhanded=(\d+)")


def broadcast_numbers(count: int) -> list[str]:
    return [f"+3465{index:07d}" for index in range(count)]


def prepare_broadcast(
    database: Database, twilio: FakeTwilio, mps: float, opted_out: list[str]
) -> uuid.UUID:
    """The default account (made by the server at start-up), its WhatsApp pace set to `mps`, an
    approved template (on Twilio too), and `opted_out` stored as contacts who wrote STOP; the
    account's id."""
    twilio.add_content("pedido_listo", TEMPLATE_BODY, sid=TEMPLATE_SID)
    with database.engine.begin() as connection:
        account_id: uuid.UUID = connection.execute(sa.select(Account.id)).scalar_one()
        connection.execute(
            sa.text("UPDATE channel_configs SET broadcast_mps = :mps WHERE channel = 'whatsapp'"),
            {"mps": mps},
        )
        connection.execute(
            sa.insert(Template).values(
                account_id=account_id,
                sid=TEMPLATE_SID,
                name="pedido_listo",
                language="es",
                body=TEMPLATE_BODY,
                variables={"1": "Ana", "2": "A-1"},
                approval=TemplateApproval.approved,
                source="manual",
            )
        )
        if opted_out:
            connection.execute(
                sa.insert(Contact),
                [
                    {
                        "account_id": account_id,
                        "channel": "whatsapp",
                        "address": number,
                        "opted_out": True,
                        "opted_out_at": datetime.now(UTC),
                    }
                    for number in opted_out
                ],
            )
    return account_id


def api(server: ServerProcess, account_id: uuid.UUID) -> httpx.Client:
    """The server's REST API, as the admin acting for the account."""
    return httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        params={"account_id": str(account_id)},
        timeout=30,
    )


def create_broadcast(client: httpx.Client, recipients: list[str]) -> dict[str, Any]:
    """The template to every recipient, each with their own {{1}}."""
    response = client.post(
        "/api/whatsapp/broadcasts",
        json={
            "template": "pedido_listo",
            "variables": {"2": "A-17"},
            "recipients": [
                {"to": number, "variables": {"1": f"cliente {index}"}}
                for index, number in enumerate(recipients)
            ],
        },
    )
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


def broadcast_finished(database: Database, broadcast_id: int) -> bool:
    """Every recipient handed over or skipped, and every message handed over sent."""
    status = database.scalar("SELECT status FROM broadcasts WHERE id = :id", id=broadcast_id)
    unsent = database.scalar(
        "SELECT count(*) FROM messages WHERE direction = 'outbound'"
        " AND status IN ('pending', 'sending')"
    )
    return bool(status == "done" and unsent == 0)


def assert_each_sent_once(twilio: FakeTwilio, expected: list[str]) -> None:
    """Each expected number got the template exactly once; nobody else got anything."""
    per_recipient = Counter(m["to"].removeprefix("whatsapp:") for m in twilio.sent)
    missing = sorted(set(expected) - set(per_recipient))
    twice = sorted(n for n, count in per_recipient.items() if count > 1)
    unexpected = sorted(set(per_recipient) - set(expected))
    assert (missing, twice, unexpected) == ([], [], []), "not exactly once"
    assert {m["params"]["ContentSid"][0] for m in twilio.sent} == {TEMPLATE_SID}


def assert_within_pace(twilio: FakeTwilio, mps: float) -> None:
    """Twilio never got more than PACE_SLACK times the pace over any PACE_WINDOW_SECONDS."""
    most = busiest_window([float(m["received_at"]) for m in twilio.sent], PACE_WINDOW_SECONDS)
    allowed = PACE_SLACK * mps * PACE_WINDOW_SECONDS
    assert most <= allowed, (
        f"{most} messages in {PACE_WINDOW_SECONDS:g} s at {mps:g}/s (at most {allowed:g})"
    )


class TestBroadcastCrashRecovery:
    """A template broadcast whose server (and worker) is killed (SIGKILL) a third of the way
    through, then restarted: each recipient gets the message once, the opted-out ones none, at
    the pace throughout, and the progress figures are Twilio's.

    The restart waits for the dead worker's leases to lapse (15 s), so that its start-up sweep
    takes the conversations whose messages were being sent at once (the periodic sweep would,
    30 s after them)."""

    MPS = 50.0
    RECIPIENTS = 300
    OPTED_OUT = 10

    @pytest.fixture
    def fakes(self) -> Iterator[tuple[FakeOpenAI, FakeTwilio]]:
        # Delivery reports too: the progress figures then count sent, delivered (and the
        # reports posted to the dead server, lost: those stay sent).
        with FakeOpenAI() as openai, FakeTwilio(latency=0.1, callbacks=True) as twilio:
            yield openai, twilio

    @postgres_only
    def test_sigkill_mid_broadcast_then_restart_sends_each_recipient_once_at_the_pace(
        self, database, server_env, servers, fakes, tmp_path
    ):
        _openai, twilio = fakes
        env = {
            **server_env,
            "TWILIO_WHATSAPP_NUMBER": WHATSAPP_NUMBER,
            "PLATICA_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        first = ServerProcess(env, tmp_path / "first.log").start()
        servers.append(first)
        recipients = broadcast_numbers(self.RECIPIENTS)
        opted_out = recipients[:: self.RECIPIENTS // self.OPTED_OUT]
        assert len(opted_out) == self.OPTED_OUT
        account_id = prepare_broadcast(database, twilio, self.MPS, opted_out)
        expected = [number for number in recipients if number not in opted_out]

        with api(first, account_id) as client:
            broadcast_id = create_broadcast(client, recipients)["id"]
        wait_for(lambda: len(twilio.sent) >= len(expected) // 3, "a third to be sent")
        first.kill()
        sent_before_restart = len(twilio.sent)
        assert sent_before_restart < len(expected) * 2 // 3, "the kill came too late"
        assert database.scalar("SELECT status FROM broadcasts") == "sending"

        wait_for(lambda: leases_lapsed(database), "the dead worker's leases to lapse", seconds=30)
        second = ServerProcess(env, tmp_path / "second.log").start()
        servers.append(second)
        wait_for(lambda: broadcast_finished(database, broadcast_id), "the broadcast", seconds=60)

        assert_each_sent_once(twilio, expected)
        assert_within_pace(twilio, self.MPS)
        stored = database.rows(
            "SELECT m.twilio_sid FROM broadcast_recipients r JOIN messages m"
            " ON m.id = r.message_id WHERE r.state = 'handed'"
        )
        assert sorted(r.twilio_sid for r in stored) == sorted(m["sid"] for m in twilio.sent)
        with api(second, account_id) as client:
            shown = client.get(f"/api/whatsapp/broadcasts/{broadcast_id}").json()
        assert shown["status"] == "done"
        assert shown["sent"] + shown["delivered"] + shown["read"] == len(twilio.sent)
        assert (shown["total"], shown["skipped"], shown["queued"], shown["failed"]) == (
            self.RECIPIENTS,
            self.OPTED_OUT,
            0,
            0,
        )
        assert list(shown["skip_reasons"].values()) == [self.OPTED_OUT]
        assert "opted out" in next(iter(shown["skip_reasons"]))


@pytest.mark.postgres
class TestTwoServers:
    @pytest.fixture
    def database_url(self, postgres_url: str) -> str:
        from tests.conftest import truncate_all

        truncate_all(postgres_url)
        return postgres_url

    def test_two_processes_answer_each_message_exactly_once_in_order(
        self, database, server_env, servers, fakes, tmp_path
    ):
        openai, twilio = fakes
        openai.latency = 0.2
        a = ServerProcess(server_env, tmp_path / "a.log").start()
        b = ServerProcess(server_env, tmp_path / "b.log").start()
        servers.extend([a, b])
        database.execute("UPDATE channel_configs SET debounce_seconds = 0")
        numbers = senders(12)
        forms: list[dict[str, str]] = []
        for turn in range(4):
            forms.extend(inbound_form(sender=n, body=f"{n} mensaje {turn}") for n in numbers)

        with httpx.Client(timeout=30) as client:
            post_all(client, [a, b], forms)
        wait_for(lambda: settled(database, len(forms)), "every message handled", seconds=90)

        states = Counter(
            r.reply_state
            for r in database.rows("SELECT reply_state FROM messages WHERE direction = 'inbound'")
        )
        assert states == {"answered": len(forms)}
        replies = database.rows(
            "SELECT reply_to_id, body FROM messages WHERE direction = 'outbound' ORDER BY id"
        )
        assert len({r.reply_to_id for r in replies}) == len(replies), "two replies to one message"
        assert len(twilio.sent) == len(replies) == len(openai.requests)
        for number in numbers:
            turns = [int(m["body"].rsplit(" ", 1)[1]) for m in twilio.sent if m["to"] == number]
            assert turns == sorted(turns), f"replies to {number} out of order: {turns}"
            assert len(turns) == len(set(turns)), f"{number} answered twice: {turns}"
            assert turns[-1] == 3, "the last message was not answered"

    def test_two_processes_share_a_broadcast_each_recipient_once_within_the_pace(
        self, database, server_env, servers, fakes, tmp_path
    ):
        """Both working processes hand the broadcast's recipients over (each batch locks the
        broadcast's row; the other skips it), together at the one pace."""
        _openai, twilio = fakes
        mps = 100.0
        # DEBUG: each process logs what each of its batches handed over.
        env = {
            **server_env,
            "TWILIO_WHATSAPP_NUMBER": WHATSAPP_NUMBER,
            "PLATICA_ADMIN_TOKEN": ADMIN_TOKEN,
            "LOG_LEVEL": "DEBUG",
        }
        a = ServerProcess(env, tmp_path / "a.log").start()
        b = ServerProcess(env, tmp_path / "b.log").start()
        servers.extend([a, b])
        recipients = broadcast_numbers(400)
        account_id = prepare_broadcast(database, twilio, mps, [])

        with api(a, account_id) as client:
            broadcast_id = create_broadcast(client, recipients)["id"]
        wait_for(lambda: broadcast_finished(database, broadcast_id), "the broadcast", seconds=60)

        assert_each_sent_once(twilio, recipients)
        assert_within_pace(twilio, mps)
        handed = {
            server.log_path.name: sum(map(int, HANDED.findall(server.log_path.read_text())))
            for server in (a, b)
        }
        assert sum(handed.values()) == len(recipients)
        assert all(handed.values()), f"one process handed everything over: {handed}"

    def test_separate_worker_process_answers_for_an_api_only_server(
        self, database, server_env, servers, fakes, tmp_path
    ):
        openai, twilio = fakes
        openai.latency = 0
        api = ServerProcess(server_env, tmp_path / "api.log").start("--no-worker")
        servers.append(api)
        database.execute("UPDATE channel_configs SET debounce_seconds = 0")
        with httpx.Client(timeout=30) as client:
            post_all(client, [api], [inbound_form(body="hola")])
        # Nobody works in the API process: the message waits, stored.
        assert database.scalar("SELECT reply_state FROM messages") == "pending"

        log = (tmp_path / "worker.log").open("ab")
        worker = subprocess.Popen(
            [sys.executable, "-m", "platica", "worker"],
            # Delivery reports go to the server that receives webhooks.
            env={**server_env, "PUBLIC_BASE_URL": api.url},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_for(lambda: settled(database, 1), "the worker's reply", seconds=60)
            assert [m["body"] for m in twilio.sent] == ["Echo: hola"]
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=20) == 0


class TestWorkerCommand:
    def test_worker_refuses_sqlite(self, sqlite_url, server_env):
        env = {**server_env, "DATABASE_URL": sqlite_url, "PUBLIC_BASE_URL": "http://127.0.0.1:9"}
        result = subprocess.run(
            [sys.executable, "-m", "platica", "worker"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert "PostgreSQL" in result.stderr
