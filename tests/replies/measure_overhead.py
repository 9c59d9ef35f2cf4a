"""A reply's own cost, measured: statements, transactions, CPU and wall time per plain reply.

Not a test (nothing here asserts a time; tests/replies/test_reply_path.py asserts the counts).
Run it on an idle machine, a few times:

    .venv/bin/python -m tests.replies.measure_overhead [postgresql|sqlite] [stub|fakes] [N]

It seeds N+20 conversations with one SMS each, answers 20 to warm up, then N one after another
through `reply_to_conversation`. `stub`: an in-process LLM and Twilio that answer at once, so
everything measured is the reply path's own. `fakes`: the official SDKs against tests/fakes.py
run as separate processes at zero latency (their CPU is not counted; the SDKs' is). PostgreSQL is
TEST_DATABASE_URL (default postgres@127.0.0.1:5432), on a throwaway database.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import event
from sqlalchemy.engine import make_url

from platica import db
from platica.channels.sender import OutgoingMessage, SentMessage, TwilioSender
from platica.config import load_settings
from platica.jobs.locks import LeaseLocks
from platica.logging import configure_logging
from platica.models import (
    Channel,
    MessageStatus,
)
from platica.replies.context import ReplyContext
from platica.replies.generator import GeneratedReply, OpenAIReplyGenerator, ReplyRequest
from platica.replies.pipeline import reply_to_conversation
from tests.conftest import DEFAULT_TEST_DATABASE_URL
from tests.factories import ACCOUNT_SID, AUTH_TOKEN
from tests.records import add_account, add_conversation, message_row

# Enough for every pooled connection to have prepared the reply path's statements (psycopg
# prepares a statement on its fifth use on a connection).
WARM_UP = 100
FAKE_PORTS = {"openai": 9301, "twilio": 9302}


class StubGenerator:
    async def generate(self, request: ReplyRequest) -> GeneratedReply:
        return GeneratedReply("Sí, de 9 a 14 h.", request.model, 10, 3, 1)

    async def aclose(self) -> None:
        return None


class StubSender:
    def __init__(self) -> None:
        self.count = 0

    async def send(self, message: OutgoingMessage) -> SentMessage:
        self.count += 1
        return SentMessage(f"SM{self.count:032x}", MessageStatus.queued)

    async def find_sent(self, message: OutgoingMessage, since: datetime) -> list[SentMessage]:
        return []

    async def aclose(self) -> None:
        return None


async def seed(sessionmaker: Any, count: int) -> list[int]:
    ids = []
    async with db.session(sessionmaker) as session:
        account = await add_account(
            session, numbers={Channel.sms: "+15005550006"}, config={"debounce_seconds": 0.0}
        )
        for index in range(count):
            conversation = await add_conversation(session, account.id, f"+34600{index:06d}")
            session.add(message_row(conversation, body="¿Abren el domingo?"))
            ids.append(conversation.id)
    return ids


def start_fakes() -> list[subprocess.Popen[bytes]]:
    fakes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.fakes", kind, "--port", str(port), "--latency", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for kind, port in FAKE_PORTS.items()
    ]
    deadline = time.monotonic() + 30
    for port in FAKE_PORTS.values():
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    return fakes


def server_cpu_seconds() -> float | None:
    """CPU seconds of the local PostgreSQL server so far: its processes' and, through the
    postmaster's counts of its reaped children, those of backends that have exited. None when no
    process of a `postgres` user can be read (a remote server, another OS)."""
    import pwd

    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total, found = 0, False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found = True
        # utime, stime, cutime, cstime (fields 14-17 of proc(5), counted from the state field)
        total += sum(int(value) for value in fields[11:15])
    return total / ticks if found else None


async def measure(backend: str, mode: str, count: int) -> str:
    admin = os.environ.get("TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)
    name = f"platica_measure_{uuid.uuid4().hex[:8]}"
    if backend == "postgresql":
        dsn = make_url(admin).set(drivername="postgresql")
        with psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        url = dsn.set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite+aiosqlite:////tmp/{name}.db"
    await db.upgrade_async(url)
    fakes = mode == "fakes"
    overrides: dict[str, Any] = {}
    if fakes:
        overrides = {
            "OPENAI_BASE_URL": f"http://127.0.0.1:{FAKE_PORTS['openai']}/v1",
            "OPENAI_API_KEY": "sk-local-0123456789",
            "TWILIO_API_BASE_URL": f"http://127.0.0.1:{FAKE_PORTS['twilio']}",
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            # Required with Twilio credentials; nothing here posts status callbacks.
            "PUBLIC_BASE_URL": "http://127.0.0.1:9",
        }
    settings = load_settings(_env_file=None, DATABASE_URL=url, LOG_LEVEL="WARNING", **overrides)
    configure_logging(settings)
    engine = db.create_engine(url)
    sessionmaker = db.create_sessionmaker(engine)
    counts: Counter[str] = Counter()

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        counts["statements"] += 1
        counts[sql.split()[0].upper()] += 1

    @event.listens_for(engine.sync_engine, "commit")
    def _commit(_conn: Any) -> None:
        counts["commits"] += 1

    ids = await seed(sessionmaker, WARM_UP + count)
    generator: Any = OpenAIReplyGenerator(settings) if fakes else StubGenerator()
    sender: Any = TwilioSender(settings) if fakes else StubSender()
    # As a process runs it: on PostgreSQL through the psycopg pool (db.open_driver_pool).
    driver_pool = await db.open_driver_pool(url) if backend == "postgresql" else None
    ctx = ReplyContext(
        settings=settings,
        sessionmaker=sessionmaker,
        generator=generator,
        sender=sender,
        locks=LeaseLocks(sessionmaker, driver_pool=driver_pool),
        driver_pool=driver_pool,
    )
    try:
        for conversation_id in ids[:WARM_UP]:
            await reply_to_conversation(ctx, conversation_id)
        counts.clear()
        walls = []
        server_cpu = server_cpu_seconds() if backend == "postgresql" else None
        cpu = time.process_time()
        for conversation_id in ids[WARM_UP:]:
            started = time.perf_counter()
            assert await reply_to_conversation(ctx, conversation_id) is None
            walls.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu
        after = server_cpu_seconds() if server_cpu is not None else None
        server = (
            f", PostgreSQL CPU {(after - server_cpu) / count * 1000:.2f} ms/reply"
            if (server_cpu is not None and after is not None)
            else ""
        )
    finally:
        await generator.aclose()
        await sender.aclose()
        if driver_pool is not None:
            await driver_pool.close()
        await engine.dispose()
        if backend == "postgresql":
            with psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            os.unlink(f"/tmp/{name}.db")
    walls.sort()
    per_reply = ", ".join(f"{key} {value / count:.2f}" for key, value in sorted(counts.items()))
    return (
        f"{backend} {mode}, {count} replies: CPU {cpu / count * 1000:.2f} ms/reply{server}, wall median "
        f"{walls[count // 2] * 1000:.2f} ms, p90 {walls[int(count * 0.9)] * 1000:.2f} ms; "
        f"per reply: {per_reply}"
    )


if __name__ == "__main__":
    arguments = sys.argv[1:]
    backend = arguments[0] if arguments else "postgresql"
    mode = arguments[1] if len(arguments) > 1 else "stub"
    count = int(arguments[2]) if len(arguments) > 2 else 200
    fakes = start_fakes() if mode == "fakes" else []
    try:
        sys.stdout.write(asyncio.run(measure(backend, mode, count)) + "\n")
    finally:
        for fake in fakes:
            fake.terminate()
            fake.wait()
