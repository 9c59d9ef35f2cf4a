"""`python -m bench.run` (`make bench`): measure SPEC §6 and write docs/benchmark.md.

What is measured is a real busy business: **one account** (the default account, one SMS number)
with **every setting at its default** (the channel's 2 s debounce included; no
WORKER_CONCURRENCY or RATE_LIMIT_* given to Plática unless --worker-concurrency asks). The
report lists every variable `platica serve` got and flags any that changes a default.

What one run does, every step bounded in requests and in time (the whole run in a time budget):

1. Starts the fake OpenAI (1 s per completion or transcription) and the fake Twilio (100 ms per
   message or media URL; its media storage host 100 ms) as separate processes
   (`python -m tests.fakes ...`).
2. Physical limits: a bare Starlette app served by uvicorn like Plática (closed loop, and open loop
   at two rates), and durable single-row INSERT+COMMIT per second on the same PostgreSQL.
3. For PostgreSQL (the bars) `repetitions` times: a throwaway database, `platica serve` as a child
   process, then
   - warm-up, then e2e steady: a few messages per second, each answered; reply overhead per
     message = reply time - ack - LLM latency - Twilio latency - the account's debounce;
   - voice notes (issue 14): a few WhatsApp voice notes per second (a 5 s Ogg Opus sample), each
     fetched (Twilio's 307, then its storage host), transcribed and answered; overhead per note
     = reply time - ack - the fakes' latencies (media fetch, transcription, LLM, send) - the
     WhatsApp number's debounce; and their acks, to compare with the text messages';
   - the one-account load: 300 webhooks/s for 15 s, 10 % of the senders writing 3-5 messages
     0.3 s apart; ack latency (the ack bar), then, with the fakes still at 1 s / 0.1 s, until
     every message is settled (answered, or marked not to be answered) or at most
     `sustain_seconds` after the load: the sustained replies per second (over the backlog left
     when the load ends, as the drain's); whatever is left is finished with the fakes at latency
     0. Then its own exactly-once check;
   - ack sweep: open loop at each arrival rate (25...600/s), latency counted from the due time;
   - closed loop: the most webhooks per second at a fixed concurrency;
   - drain: the fakes at latency 0 until every message is settled (bounded by `drain_seconds`
     and the time budget): the instant-LLM replies per second, to compare with the sustained;
   - checks, in the database and at the fake Twilio: every acknowledged message stored once,
     answered by exactly one reply (a burst's messages by one reply between them), none twice.
4. Scale (PostgreSQL): the e2e steady and closed-loop phases with 100x more stored messages, and
   the same drain and checks.
5. A broadcast (issue 15, PostgreSQL): one template to 2,000 recipients at 50/s, handed over by
   a `platica worker` (beside `serve --no-worker`) that is killed (SIGKILL) half-way and started
   again at once: each recipient one message (none twice, none missing, none to the 20 who
   opted out), never over 110 % of the pace in any 5 s, and the progress figures as Twilio's.
6. SQLite (for information): the same without the one-account load, once.
   (`--only voice`: only the warm-up, e2e steady and voice-note phases, with their checks, of
   each backend: nothing else. `--only broadcast`: only the broadcast.)
7. Optionally (--split-worker) PostgreSQL with `serve --no-worker` + a `platica worker`.
8. Optionally (--profile, needs py-spy on PATH or in the virtualenv) py-spy samples
   `platica serve` under the 300/s load; the hot spots go into the report.

PostgreSQL CPU is the whole server's (the postmaster and all its children, exited ones
included), per phase; sessions are the connections opened on the scenario's database.

Numbers from a shared machine are noisy: each figure is min/median/max over the repetitions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tests.factories import ACCOUNT_SID, AUTH_TOKEN, SMS_NUMBER, WHATSAPP_NUMBER
from tests.media.samples import ogg_opus

from bench import checks, database, loadgen, procs, report
from bench.loadgen import PhaseResult, Sample, SenderNumbers, WebhookRequest
from bench.procs import REPO, Child, Sampler, Usage, clean_env, free_port, python_child
from bench.stats import percentile

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SPLIT = "postgres-split"  # serve --no-worker + platica worker
# What WhatsApp sends a voice note as.
VOICE_NOTE_TYPE = "audio/ogg"
# The broadcast phase's template (added to the account by hand, approved) and the admin token
# it is created with.
BROADCAST_TEMPLATE: dict[str, Any] = {
    "sid": "HX" + "b0ad" * 8,
    "name": "aviso_bench",
    "body": "Hola {{1}}, tu pedido está listo",
    "variables": {"1": "Ana"},
}
BROADCAST_TOKEN = "bench-admin-token-0123456789abcdef"


@dataclass
class Config:
    # Two repetitions (three before the one-account load was added) keep the run in 10 minutes.
    repetitions: int = 2
    # SQLite is here for information; its sweep stops early.
    sqlite_repetitions: int = 1
    rates: list[float] = field(
        default_factory=lambda: [25.0, 50.0, 100.0, 200.0, 300.0, 400.0, 600.0]
    )
    # Short steps: every message acknowledged in a repetition is answered (and checked) before
    # the next, and the whole run has ten minutes.
    step_seconds: float = 2.5
    closed_concurrency: int = 32
    closed_seconds: float = 2.0
    e2e_rate: float = 5.0
    e2e_seconds: float = 6.0
    # Issue 14: WhatsApp voice notes (`voice_note_seconds` of Ogg Opus) at `voice_rate` for
    # `voice_seconds` (0: none), after the e2e steady phase, each answered. Their overhead bar.
    voice_rate: float = 5.0
    voice_seconds: float = 4.0
    voice_note_seconds: float = 5.0
    bar_voice_overhead_ms: float = 50.0
    # Issue 15: a template broadcast to `broadcast_recipients` at `broadcast_mps` (PostgreSQL,
    # `serve --no-worker` + `platica worker`), the worker killed (SIGKILL) once
    # `broadcast_kill_share` of it was sent and started again at once; `broadcast_opted_out` of
    # the recipients wrote STOP beforehand. 0 recipients: none.
    broadcast_recipients: int = 2000
    broadcast_mps: float = 50.0
    broadcast_opted_out: int = 20
    broadcast_kill_share: float = 0.5
    # After the restart, at most this long for the rest (the killed worker's conversations wait
    # out its lease, 15 s, and the sweeper's grace, 30 s).
    broadcast_wait_seconds: float = 120.0
    reply_wait_seconds: float = 45.0
    # The one-account load (SPEC §6): `bar_rate` webhooks/s for `bar_seconds` to one account;
    # `burst_share` of its senders write `burst_sizes` messages `burst_gap` seconds apart.
    bar_seconds: float = 15.0
    burst_share: float = 0.1
    burst_sizes: tuple[int, int] = (3, 5)
    burst_gap: float = 0.3
    # After the load, at most this long with the fakes at their latency (the sustained rate);
    # what is left then is finished with the fakes at 0 (at most `drain_seconds`).
    sustain_seconds: float = 60.0
    # The sustained replies/s with the 1 s LLM must be at least this share of the instant drain's.
    bar_sustained_ratio: float = 0.8
    # The end of each repetition: at most this long for every acknowledged message's reply.
    drain_seconds: float = 90.0
    warm_up_rate: float = 20.0
    warm_up_seconds: float = 3.0
    # Then this long at `bar_rate`, so that the pools have opened their connections.
    warm_up_peak_seconds: float = 1.0
    # WORKER_CONCURRENCY for every `platica serve` / `platica worker`; None: Plática's default.
    worker_concurrency: int | None = None
    baseline_rates: list[float] = field(default_factory=lambda: [300.0, 600.0])
    probe_seconds: float = 3.0
    probe_connections: list[int] = field(default_factory=lambda: [1, 16])
    # The fake OpenAI's, for completions and transcriptions alike.
    llm_latency: float = 1.0
    # The fake Twilio's, for sends and for its media URLs (answered with a 307).
    twilio_latency: float = 0.1
    # The fake Twilio's media storage host's (where the 307 leads).
    media_latency: float = 0.1
    backends: list[str] = field(default_factory=lambda: ["postgres", "sqlite"])
    base_messages: int = 3000
    # 100x only (10x as well before the one-account load): the larger history is the test.
    scale_factors: list[int] = field(default_factory=lambda: [100])
    bar_rate: float = 300.0
    # SPEC §6: SQLite holds p99 < 50 ms at 200/s (reported for information).
    sqlite_bar_rate: float = 200.0
    bar_p99_ms: float = 50.0
    bar_overhead_ms: float = 20.0
    client: str = "raw"
    # A sweep step this bad ends the sweep: higher rates would only pile up work.
    abort_p99_ms: float = 1000.0
    settle_seconds: float = 15.0
    baselines: bool = True
    # PostgreSQL with `serve --no-worker` + `platica worker`: the ack path without the worker
    # in its process. Off by default: `platica serve` on PostgreSQL already runs its worker as a
    # child process, so this adds little for its time. Run last, with fewer repetitions.
    split_worker: bool = False
    split_worker_repetitions: int = 1
    profile: bool = False
    profile_seconds: float = 10.0
    # "voice": only the warm-up, e2e steady and voice-note phases of each backend (and their
    # checks): a quick try of the voice notes without the whole run. "broadcast": only the
    # broadcast phase.
    only: str | None = None
    budget_seconds: float = 540.0
    database_url: str = DEFAULT_DATABASE_URL
    output: str = "docs/benchmark.md"


class OutOfTime(Exception):
    pass


def log(message: str) -> None:
    sys.stdout.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stdout.flush()


class Bench:
    def __init__(self, config: Config, work_dir: Path) -> None:
        self.config = config
        self.work_dir = work_dir
        self.started = time.monotonic()
        self.deadline = self.started + config.budget_seconds
        self.children: list[Child] = []
        self.senders = SenderNumbers()
        self.pg: database.PostgresServer | None = None
        self.openai_url = ""
        self.twilio_url = ""
        self.fake_pids: dict[str, int] = {}
        self.number = SMS_NUMBER  # the one account's number, where every webhook goes
        self.postmaster: int | None = None  # the PostgreSQL server, for its CPU
        self.postgres: database.PostgresWatch | None = None  # the running scenario's database
        # Wall seconds of each finished repetition and of each drain, per scenario: estimates
        # for the time budget.
        self.rep_seconds: dict[str, list[float]] = {}
        self.drain_waits: dict[str, list[float]] = {}
        self.http = httpx.AsyncClient(timeout=30)
        self.voice_note = ogg_opus(config.voice_note_seconds)
        self.results: dict[str, Any] = {
            "config": asdict(config),
            "meta": {},
            "baseline": [],
            "insert_probe": [],
            "scenarios": {},
            "scale": {},
            "profile": None,
            "broadcast": None,
            "serve_env": {},
            "notes": [],
            "skipped": [],
        }

    # -- helpers ------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def ensure_time(self, needed: float, what: str) -> None:
        if time.monotonic() + needed > self.deadline:
            self.results["skipped"].append(what)
            log(f"skipping {what}: not enough of the time budget left")
            raise OutOfTime(what)

    def start_child(self, name: str, module_args: list[str], env: dict[str, str]) -> Child:
        child = python_child(name, module_args, env, self.work_dir).start(self.work_dir)
        self.children.append(child)
        return child

    def stop_child(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)

    async def fake(self, url: str, command: dict[str, Any] | None = None) -> dict[str, Any]:
        if command is None:
            response = await self.http.get(url + "/_fake/state")
        else:
            response = await self.http.post(url + "/_fake/control", json=command)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def sent(self) -> list[dict[str, Any]]:
        """Every message the fake Twilio accepted so far (sid, to, received_at...)."""
        sent: list[dict[str, Any]] = (await self.fake(self.twilio_url))["sent"]
        return sent

    async def fakes_latency(self, instant: bool) -> None:
        """The fakes at latency 0, or back at the configured latencies."""
        config = self.config
        await self.fake(self.openai_url, {"latency": 0 if instant else config.llm_latency})
        await self.fake(
            self.twilio_url,
            {
                "latency": 0 if instant else config.twilio_latency,
                "media_latency": 0 if instant else config.media_latency,
            },
        )

    async def replies(self) -> dict[str, list[float]]:
        """Reply receive times (fake Twilio's time.monotonic()) per recipient."""
        by_recipient: dict[str, list[float]] = {}
        for message in await self.sent():
            by_recipient.setdefault(message["to"], []).append(float(message["received_at"]))
        return by_recipient

    async def poll_replies(self, senders: Sequence[str], deadline: float) -> dict[str, list[float]]:
        """Poll the fake Twilio until every one of `senders` got a reply, or `deadline`."""
        wanted = set(senders)
        while True:
            before = time.monotonic()
            replies = await self.replies()
            now = time.monotonic()
            if wanted <= replies.keys() or now >= deadline:
                return replies
            # Each poll fetches every reply so far (the fake has no cheaper query): with
            # thousands of them that costs CPU, in the fake and here, that the worker being
            # measured would otherwise have; poll at most about a tenth of the time.
            interval = min(max(0.25, 10 * (now - before)), 2.0)
            await asyncio.sleep(min(interval, max(0.0, deadline - now)))

    async def wait_for_replies(
        self, senders: Sequence[str], seconds: float
    ) -> dict[str, list[float]]:
        return await self.poll_replies(senders, min(time.monotonic() + seconds, self.deadline))

    # -- setup --------------------------------------------------------------------------------

    async def start_fakes(self) -> None:
        env = clean_env()
        openai_port, twilio_port = free_port(), free_port()
        openai = self.start_child(
            "fake-openai",
            [
                "tests.fakes",
                "openai",
                "--port",
                str(openai_port),
                "--latency",
                str(self.config.llm_latency),
            ],
            env,
        )
        twilio = self.start_child(
            "fake-twilio",
            [
                "tests.fakes",
                "twilio",
                "--port",
                str(twilio_port),
                "--latency",
                str(self.config.twilio_latency),
                "--account-sid",
                ACCOUNT_SID,
                "--auth-token",
                AUTH_TOKEN,
                "--media-latency",
                str(self.config.media_latency),
            ],
            env,
        )
        self.openai_url = f"http://127.0.0.1:{openai_port}"
        self.twilio_url = f"http://127.0.0.1:{twilio_port}"
        self.fake_pids = {"fake-openai": openai.pid, "fake-twilio": twilio.pid}
        await openai.wait_http(self.openai_url + "/_fake/state")
        await twilio.wait_http(self.twilio_url + "/_fake/state")
        log(
            f"fakes up: OpenAI {self.openai_url} ({self.config.llm_latency} s), "
            f"Twilio {self.twilio_url} ({self.config.twilio_latency} s, its media storage "
            f"{self.config.media_latency} s)"
        )

    def serve_env(self, database_url: str, port: int) -> dict[str, str]:
        """`platica serve`'s environment: only what it needs to run here (the database, the
        fakes, its own URL, the log level); every other setting at its default. What it got
        goes into the report (report.py flags anything that changes a default)."""
        env = clean_env()
        platica = {
            "DATABASE_URL": database_url,
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "TWILIO_PHONE_NUMBER": SMS_NUMBER,
            # The same account's WhatsApp number: where the voice notes go.
            "TWILIO_WHATSAPP_NUMBER": WHATSAPP_NUMBER,
            "TWILIO_API_BASE_URL": self.twilio_url,
            "OPENAI_BASE_URL": self.openai_url + "/v1",
            "OPENAI_API_KEY": "sk-local-0123456789",
            "LOG_LEVEL": "INFO",
        }
        if self.config.worker_concurrency is not None:
            platica["WORKER_CONCURRENCY"] = str(self.config.worker_concurrency)
        env.update(platica)
        shown = self.results["serve_env"]
        for name, value in platica.items():
            if name in (
                "DATABASE_URL",
                "PUBLIC_BASE_URL",
                "TWILIO_API_BASE_URL",
                "OPENAI_BASE_URL",
            ):
                value = "(per scenario)" if name == "DATABASE_URL" else "http://127.0.0.1:(port)"
            elif name in ("TWILIO_AUTH_TOKEN", "OPENAI_API_KEY"):
                value = "(the fakes')"
            shown[name] = value
        return env

    # -- phases -------------------------------------------------------------------------------

    def requests_for(self, base_url: str, count: int) -> list[WebhookRequest]:
        """`count` webhooks to the account, each from a new sender."""
        plan = loadgen.single_plan(self.senders.take(count))
        return loadgen.build_requests(base_url, plan, to=self.number)

    async def settle(self, base_url: str) -> float:
        """Wait (bounded) until the server answers /healthz quickly again: the previous phase's
        leftovers must not be measured in the next. Seconds waited."""
        started = time.monotonic()
        deadline = min(started + self.config.settle_seconds, self.deadline)
        quick = 0
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() < deadline and quick < 3:
                before = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):
                    await client.get(base_url + "/healthz")
                quick = quick + 1 if time.monotonic() - before < 0.02 else 0
                await asyncio.sleep(0.1)
        return time.monotonic() - started

    async def watch_postgres(self, database_url: str, sqlite_path: Path | None) -> None:
        """From now on every phase counts the PostgreSQL server's CPU and the sessions opened on
        this database (nothing on SQLite). Call after start-up (its connections are not the
        phases'); `unwatch_postgres()` at the end of the scenario."""
        await self.unwatch_postgres()
        if sqlite_path is None:
            self.postgres = await database.PostgresWatch.open(database_url, self.postmaster)

    async def unwatch_postgres(self) -> None:
        if self.postgres is not None:
            watch, self.postgres = self.postgres, None
            await watch.aclose()

    async def open_phase(
        self,
        base_url: str,
        rate: float,
        seconds: float,
        pids: dict[str, int],
        requests: list[WebhookRequest] | None = None,
    ) -> tuple[PhaseResult, Usage]:
        if requests is None:
            requests = self.requests_for(base_url, max(1, round(rate * seconds)))
        client = loadgen.make_client(self.config.client, base_url)
        try:
            async with Sampler(pids, self.postgres) as usage:
                result = await loadgen.open_loop(client, requests, rate)
        finally:
            await client.aclose()
        return result, usage

    async def closed_phase(
        self,
        base_url: str,
        concurrency: int,
        seconds: float,
        pids: dict[str, int],
        max_rate: float = 2500.0,
    ) -> tuple[PhaseResult, Usage]:
        requests = self.requests_for(base_url, int(max_rate * seconds))
        client = loadgen.make_client(self.config.client, base_url)
        try:
            async with Sampler(pids, self.postgres) as usage:
                result = await loadgen.closed_loop(client, iter(requests), concurrency, seconds)
        finally:
            await client.aclose()
        if len(result.samples) >= len(requests):
            self.results["notes"].append(
                f"closed loop on {base_url} ran out of its {len(requests)} precomputed requests"
            )
        return result, usage

    def pids(self, serve: Child, *more: Child) -> dict[str, int]:
        pids = {"platica": serve.pid, "load generator": os.getpid(), **self.fake_pids}
        # On PostgreSQL, `platica serve` runs its worker as a child process.
        for index, pid in enumerate(procs.children(serve.pid)):
            pids["platica worker" if index == 0 else f"platica worker {index + 1}"] = pid
        for child in more:
            pids[child.name] = child.pid
        return pids

    # -- baselines ----------------------------------------------------------------------------

    async def run_baselines(self) -> None:
        config = self.config
        for rep in range(config.repetitions):
            self.ensure_time(
                10 + config.closed_seconds + len(config.baseline_rates) * config.step_seconds,
                f"bare ASGI baseline, repetition {rep + 1}",
            )
            port = free_port()
            app = self.start_child(
                f"bare-asgi-{rep + 1}", ["bench.baseline_app", "--port", str(port)], clean_env()
            )
            base_url = f"http://127.0.0.1:{port}"
            try:
                await app.wait_http(base_url + "/healthz")
                pids = {"bare asgi": app.pid, "load generator": os.getpid()}
                entry: dict[str, Any] = {"open": {}}
                for rate in config.baseline_rates:
                    result, usage = await self.open_phase(base_url, rate, config.step_seconds, pids)
                    entry["open"][str(int(rate))] = {**result.summary(), "usage": asdict(usage)}
                closed, usage = await self.closed_phase(
                    base_url, config.closed_concurrency, config.closed_seconds, pids, 6000.0
                )
                entry["closed"] = {**closed.summary(), "usage": asdict(usage)}
                self.results["baseline"].append(entry)
                log(
                    f"bare ASGI rep {rep + 1}: closed loop {closed.achieved_rate:,.0f}/s, "
                    + ", ".join(f"{r}/s p99 {v['p99_ms']:.1f} ms" for r, v in entry["open"].items())
                )
            finally:
                self.stop_child(app)

    async def run_insert_probe(self) -> None:
        assert self.pg is not None
        url = self.pg.create("probe")
        try:
            for rep in range(self.config.repetitions):
                self.ensure_time(
                    2 + self.config.probe_seconds * len(self.config.probe_connections),
                    f"INSERT probe, repetition {rep + 1}",
                )
                entry = {}
                for connections in self.config.probe_connections:
                    probe = await database.insert_probe(url, connections, self.config.probe_seconds)
                    entry[str(connections)] = probe.per_second
                self.results["insert_probe"].append(entry)
                log(
                    f"INSERT+COMMIT probe rep {rep + 1}: "
                    + ", ".join(f"{c} conn {v:,.0f}/s" for c, v in entry.items())
                )
        finally:
            self.pg.drop(url)

    # -- Plática ------------------------------------------------------------------------------

    async def start_platica(
        self, name: str, database_url: str, *, worker: bool = True
    ) -> tuple[Child, str, list[Child]]:
        port = free_port()
        args = ["platica", "serve", "--port", str(port)]
        if not worker:
            args.append("--no-worker")
        env = self.serve_env(database_url, port)
        serve = self.start_child(name, args, env)
        base_url = f"http://127.0.0.1:{port}"
        extra: list[Child] = []
        await serve.wait_http(base_url + "/healthz")
        if not worker:
            extra.append(self.start_child(f"{name}-worker", ["platica", "worker"], env))
            await extra[-1].wait_log("startup.ready")
        elif not database_url.startswith("sqlite"):
            # On PostgreSQL serve's worker is a child process that starts on its own: measuring
            # before it is ready would count its start-up as reply latency.
            await serve.wait_log("worker=True")
        return serve, base_url, extra

    async def read_account(self, database_url: str, sqlite_path: Path | None) -> dict[str, Any]:
        """The account as `platica serve` made it at start-up (nothing is changed): its numbers
        and their debounce, which the reply overhead subtracts."""
        account = await asyncio.to_thread(
            database.account_settings, None if sqlite_path else database_url, sqlite_path
        )
        channels = account["sms_channels"]
        if account["accounts"] != 1 or len(channels) != 1:
            raise RuntimeError(f"expected the one default account with one SMS number: {account}")
        if channels[0]["phone_number"] != self.number:
            raise RuntimeError(f"the account's number is not {self.number}: {account}")
        whatsapp = account["whatsapp_channels"]
        if [c["phone_number"] for c in whatsapp] != [WHATSAPP_NUMBER]:
            raise RuntimeError(f"expected the WhatsApp number {WHATSAPP_NUMBER}: {account}")
        self.results["meta"]["account"] = account
        return account

    async def warm_up(self, base_url: str, pids: dict[str, int]) -> list[WebhookRequest]:
        """A few seconds of traffic, then a moment at the bar's rate, each message answered,
        before anything is measured: a service in use has its connections open (the message
        path's pool opens them at start-up, the other pool as concurrent load needs them) and
        its statements prepared (psycopg prepares one on its fifth use on a connection). The
        messages still count for the checks."""
        config = self.config
        result, _ = await self.open_phase(
            base_url, config.warm_up_rate, config.warm_up_seconds, pids
        )
        acked = [sample.request for sample in result.ok]
        if config.warm_up_peak_seconds > 0:
            peak, _ = await self.open_phase(
                base_url, config.bar_rate, config.warm_up_peak_seconds, pids
            )
            acked += [sample.request for sample in peak.ok]
        await self.wait_for_replies([r.sender for r in acked], config.reply_wait_seconds)
        return acked

    async def e2e_steady(
        self, base_url: str, pids: dict[str, int], debounce: float
    ) -> dict[str, Any]:
        """A sustainable rate, one message per sender; every message answered; reply overhead
        per message: reply time - ack - the fakes' latencies - the account's debounce."""
        config = self.config
        result, usage = await self.open_phase(base_url, config.e2e_rate, config.e2e_seconds, pids)
        acked = result.ok
        replies = await self.wait_for_replies(
            [s.request.sender for s in acked], config.reply_wait_seconds
        )
        waits = config.llm_latency + config.twilio_latency + debounce
        return {
            "ack": result.summary(),
            "usage": asdict(usage),
            **_answered(acked, replies, waits),
            "debounce_seconds": debounce,
            "acked": [s.request for s in acked],  # popped by the caller: not for the JSON
        }

    def voice_waits(self, debounce: float) -> float:
        """What a voice note's reply waits for besides Plática: the WhatsApp number's debounce,
        the media fetch (Twilio's media URL answering its 307, then the storage host), the
        transcription, the LLM and the send."""
        config = self.config
        fetch = config.twilio_latency + config.media_latency
        return debounce + fetch + config.llm_latency + config.llm_latency + config.twilio_latency

    async def voice_notes(
        self,
        base_url: str,
        database_url: str,
        sqlite_path: Path | None,
        pids: dict[str, int],
        debounce: float,
    ) -> dict[str, Any]:
        """Issue 14: WhatsApp voice notes at `voice_rate` for `voice_seconds`, one per sender,
        each registered with the fake Twilio first; every one fetched, transcribed and answered.
        Overhead per note: reply time - ack - `voice_waits` (the fakes' latencies and the
        debounce); the acks, to compare with the text messages' (e2e steady, same rate)."""
        config = self.config
        count = max(1, round(config.voice_rate * config.voice_seconds))
        registered = await self.http.post(
            self.twilio_url + "/_fake/media",
            params={"count": str(count)},
            content=self.voice_note,
            headers={"Content-Type": VOICE_NOTE_TYPE},
        )
        registered.raise_for_status()
        urls: list[str] = registered.json()["urls"]
        requests = loadgen.build_requests(
            base_url,
            [(sender, "") for sender in self.senders.take(count)],
            path="/webhook/whatsapp",
            to=WHATSAPP_NUMBER,
            channel="whatsapp",
            media=[(url, VOICE_NOTE_TYPE) for url in urls],
        )
        # The CPU from the first note to the last reply: each note's whole cost, reply included.
        async with Sampler(pids, self.postgres) as usage:
            result, _ = await self.open_phase(
                base_url, config.voice_rate, config.voice_seconds, pids, requests
            )
            acked = result.ok
            replies = await self.wait_for_replies(
                [s.request.sender for s in acked], config.reply_wait_seconds
            )
        # Each repetition has its own database: its media rows are these notes'.
        states = await asyncio.to_thread(
            database.media_states, None if sqlite_path else database_url, sqlite_path
        )
        return {
            "ack": result.summary(),
            "usage": asdict(usage),
            **_answered(acked, replies, self.voice_waits(debounce)),
            "debounce_seconds": debounce,
            "waits_seconds": self.voice_waits(debounce),
            "note_seconds": config.voice_note_seconds,
            "note_bytes": len(self.voice_note),
            "media_states": states,
            "acked": [s.request for s in acked],  # popped by the caller: not for the JSON
        }

    async def unsettled(self, sqlite_path: Path | None) -> int:
        """Messages still waiting for their reply, or replies not yet sent."""
        if sqlite_path is not None:
            return await asyncio.to_thread(database.unsettled_sqlite, sqlite_path)
        assert self.postgres is not None, "watch_postgres() first"
        return await self.postgres.unsettled()

    async def wait_settled(self, sqlite_path: Path | None, deadline: float) -> tuple[int, int]:
        """Poll the database until every message is settled (answered, or marked not to be
        answered, and every reply sent), or `deadline` (never past the time budget). (What was
        left at the first poll, what is left now: 0 when settled.)"""
        deadline = min(deadline, self.deadline)
        first: int | None = None
        while True:
            left = await self.unsettled(sqlite_path)
            first = left if first is None else first
            if left == 0 or time.monotonic() >= deadline:
                return first, left
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    async def ledger(
        self, database_url: str, sqlite_path: Path | None, after_id: int = 0
    ) -> checks.Ledger:
        return await asyncio.to_thread(
            database.reply_ledger, None if sqlite_path else database_url, sqlite_path, after_id
        )

    async def one_account_load(
        self, base_url: str, database_url: str, pids: dict[str, int]
    ) -> dict[str, Any]:
        """SPEC §6: `bar_rate` webhooks/s for `bar_seconds` to the one account, some senders
        writing bursts. The acks (the ack bar); then, with the fakes still at their latency,
        until every message is settled or `sustain_seconds` after the load: the sustained
        replies per second (after the load, as the drain's rate: a backlog, no webhooks
        arriving); the rest with the fakes at 0; then its exactly-once check."""
        config = self.config
        count = max(1, round(config.bar_rate * config.bar_seconds))
        burst = loadgen.Burst(config.burst_share, config.burst_sizes, config.burst_gap)
        plan = loadgen.bursty_plan(count, config.bar_rate, lambda: self.senders.take(1)[0], burst)
        requests = loadgen.build_requests(base_url, plan, to=self.number)
        result, load_usage = await self.open_phase(
            base_url, config.bar_rate, config.bar_seconds, pids, requests
        )
        load_end = max((s.done for s in result.samples), default=time.monotonic())
        async with Sampler(pids, self.postgres) as sustain_usage:
            left_at_end, left = await self.wait_settled(None, load_end + config.sustain_seconds)
        switched_at: float | None = None
        finish: dict[str, Any] | None = None
        if left:
            # Not done in the time allowed: the rest with the fakes at once, for the checks.
            switched_at = time.monotonic()
            await self.fakes_latency(instant=True)
            try:
                before, left = await self.wait_settled(None, switched_at + config.drain_seconds)
            finally:
                await self.fakes_latency(instant=False)
            finish = {
                "left": before,
                "seconds": time.monotonic() - switched_at,
                "unsettled_at_the_end": left,
            }
        waited = time.monotonic() - load_end
        sent = await self.sent()
        ledger = await self.ledger(database_url, None)
        acked = [s.request for s in result.ok]
        senders = {request.sender for request in acked}
        check = checks.exactly_once(ledger, [(r.sid, r.sender) for r in acked], sent)
        # The sustained rate: replies sent with the fakes at their latency.
        times = checks.reply_times(sent, ledger, senders, before=switched_at)
        started = result.started
        during = [t for t in times if t <= load_end]
        after = [t for t in times if t > load_end]
        return {
            "ack": result.summary(),
            "usage": asdict(load_usage),
            # Per reply: the replies sent after the load, the CPU spent meanwhile.
            "after_load": {"usage": asdict(sustain_usage), "ok": len(after)},
            "messages": len(acked),
            "senders": len(senders),
            "unsettled_at_load_end": left_at_end,
            "settled_with_latency": switched_at is None,
            "wait_seconds": waited,
            "finish_instant": finish,
            "replies_with_latency": len(times),
            # The bar's (a): the backlog left when the load ends, answered with the fakes still
            # at their latency, like the drain's (b) with no webhooks to acknowledge meanwhile.
            "sustained_rate": checks.steady_rate(after),
            "whole_rate": checks.steady_rate(times),
            "first_to_last_rate": checks.span_rate(times),
            "during_load_rate": (len(during) / (load_end - started))
            if load_end > started
            else None,
            "after_load_rate": checks.span_rate([load_end, *after]) if after else None,
            "checks": check,
            "acked": acked,  # popped by the caller: not for the JSON
        }

    async def platica_rep(
        self,
        backend: str,
        rep: int,
        *,
        worker: bool = True,
        sweep: bool = True,
        closed: bool = True,
        bar: bool = True,
    ) -> dict[str, Any]:
        config = self.config
        scenario = backend if worker else SPLIT
        sqlite_path: Path | None = None
        if backend == "sqlite":
            sqlite_path = self.work_dir / f"platica-{rep}.db"
            database_url = f"sqlite+aiosqlite:///{sqlite_path}"
        else:
            assert self.pg is not None
            database_url = self.pg.create_migrated(f"{backend.replace('+', '_')}_{rep}")
        name = f"platica-{backend}-{rep}"
        serve: Child | None = None
        extra: list[Child] = []
        await self.fake(self.twilio_url, {"reset": True})
        await self.fake(self.openai_url, {"reset": True})
        try:
            serve, base_url, extra = await self.start_platica(name, database_url, worker=worker)
            account = await self.read_account(database_url, sqlite_path)
            debounce = account["sms_channels"][0]["debounce_seconds"]
            pids = self.pids(serve, *extra)
            await self.watch_postgres(database_url, sqlite_path)
            entry: dict[str, Any] = {"sweep": {}, "debounce_seconds": debounce}
            everything = config.only is None
            acked: list[WebhookRequest] = await self.warm_up(base_url, pids)

            entry["steady"] = await self.e2e_steady(base_url, pids, debounce)
            acked += entry["steady"].pop("acked")
            steady = entry["steady"]
            log(
                f"{backend} rep {rep}: e2e steady {steady['replies']}/{steady['messages']} answered, "
                f"overhead p50 {steady['overhead_ms']['p50']:.1f} ms"
            )
            if config.voice_seconds > 0:
                voice_debounce = account["whatsapp_channels"][0]["debounce_seconds"]
                entry["voice"] = await self.voice_notes(
                    base_url, database_url, sqlite_path, pids, voice_debounce
                )
                acked += entry["voice"].pop("acked")
                log(f"{backend} rep {rep}: {_voice_line(entry['voice'], steady)}")
            if everything and bar and sqlite_path is None and config.bar_seconds > 0:
                entry["bar"] = await self.one_account_load(base_url, database_url, pids)
                acked += entry["bar"].pop("acked")
                log(f"{backend} rep {rep}: {_bar_line(entry['bar'])}")
            rates = config.rates if sweep and everything else []
            for index, rate in enumerate(rates):
                entry["sweep"][str(int(rate))] = {"settled_seconds": await self.settle(base_url)}
                result, usage = await self.open_phase(base_url, rate, config.step_seconds, pids)
                acked += [s.request for s in result.ok]
                entry["sweep"][str(int(rate))].update(result.summary(), usage=asdict(usage))
                log(
                    f"{backend} rep {rep}: {rate:.0f}/s → p50 {result.latency(50):.1f} ms, "
                    f"p99 {result.latency(99):.1f} ms, failed {result.errors}, "
                    f"platica CPU {usage.cpu_percent.get('platica', 0):.0f}%"
                )
                if result.latency(99) > config.abort_p99_ms or result.errors > 0.01 * len(
                    result.samples
                ):
                    skipped = [f"{r:g}" for r in rates[index + 1 :]]
                    if skipped:
                        entry["sweep_aborted_after"] = rate
                        log(
                            f"{backend} rep {rep}: sweep stops here; not run: {', '.join(skipped)}/s"
                        )
                    break
            if closed and everything:
                await self.settle(base_url)
                result, usage = await self.closed_phase(
                    base_url, config.closed_concurrency, config.closed_seconds, pids
                )
                acked += [s.request for s in result.ok]
                entry["closed"] = {**result.summary(), "usage": asdict(usage)}
                log(
                    f"{backend} rep {rep}: closed loop ({config.closed_concurrency}) "
                    f"{result.achieved_rate:,.0f}/s, p99 {result.latency(99):.1f} ms"
                )
            entry["drain"], sent = await self.drain(pids, scenario, sqlite_path)
            ledger = await self.ledger(database_url, sqlite_path)
            entry["drain"].update(_drain_rates(entry["drain"], sent, ledger))
            log(f"{backend} rep {rep}: {_drain_line(entry['drain'])}")
            entry["checks"] = checks.exactly_once(ledger, [(r.sid, r.sender) for r in acked], sent)
            log(f"{backend} rep {rep}: {_checks_line(entry['checks'])}")
            return entry
        finally:
            await self.unwatch_postgres()
            for child in extra:
                self.stop_child(child)
            if serve is not None:
                self.stop_child(serve)
            if sqlite_path is None and self.pg is not None:
                self.pg.drop(database_url)

    async def drain(
        self, pids: dict[str, int], scenario: str, sqlite_path: Path | None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The end of a repetition: the fakes at latency 0 until every message is settled in the
        database (answered, or marked not to be answered, and every reply sent), at most
        `drain_seconds` and never past the time budget. Its summary, and what the fake Twilio
        accepted (for the checks and the instant-LLM replies per second)."""
        config = self.config
        # Correctness first; and the fakes answering at once, the backlog goes as fast as
        # Plática's CPU allows: the instant-LLM rate the sustained one is compared with.
        await self.fakes_latency(instant=True)
        started = time.monotonic()
        own_deadline = started + config.drain_seconds
        try:
            async with Sampler(pids, self.postgres) as usage:
                backlog, left = await self.wait_settled(sqlite_path, own_deadline)
        finally:
            await self.fakes_latency(instant=False)
        waited = time.monotonic() - started
        self.drain_waits.setdefault(scenario, []).append(waited)
        sent = await self.sent()
        stopped_by = None
        if left:
            stopped_by = "time budget" if self.deadline < own_deadline else "drain deadline"
        summary = {
            "backlog": backlog,
            "unsettled_at_the_end": left,
            "complete": left == 0,
            "stopped_by": stopped_by,
            "started": started,
            "waited_seconds": waited,
            "usage": asdict(usage),
        }
        return summary, sent

    def drain_estimate(self, scenario: str) -> float:
        """Seconds a drain of `scenario` may take: its longest so far, else the longest of any
        scenario so far (a first guess: the budget cuts a drain short anyway, and the checks
        then say so), else the most allowed."""
        waits = self.drain_waits.get(scenario) or [
            wait for scenario_waits in self.drain_waits.values() for wait in scenario_waits
        ]
        return min(max(waits), self.config.drain_seconds) if waits else self.config.drain_seconds

    def rep_estimate(self, scenario: str, phases: float) -> float:
        """Seconds one more repetition of `scenario` should take: its longest so far (the
        sweep's early stop and the drain make them hard to foresee), else `phases` (the load
        phases' estimate) and the longest drain allowed."""
        done = self.rep_seconds.get(scenario)
        return max(done) if done else phases + self.drain_estimate(scenario)

    async def timed_rep(self, scenario: str, rep: Any) -> dict[str, Any]:
        """Await one repetition and remember how long it took (for rep_estimate)."""
        started = time.monotonic()
        entry: dict[str, Any] = await rep
        self.rep_seconds.setdefault(scenario, []).append(time.monotonic() - started)
        return entry

    async def run_backend(self, backend: str) -> None:
        config = self.config
        reps: list[dict[str, Any]] = []
        self.results["scenarios"][backend] = reps
        # Start-up, warm-up, steady and the voice notes (each waits out the debounce), the
        # one-account load and its wait (a guess: as long again as the load, at least 20 s), the
        # sweep, the closed loop; the drain comes on top (rep_estimate).
        phases = 12 + config.warm_up_seconds + config.e2e_seconds + 10
        if config.voice_seconds > 0:
            # The notes, then the last one's reply (debounce, fetch, transcription, LLM, send).
            phases += config.voice_seconds + 10
        if config.only is None:
            phases += len(config.rates) * (config.step_seconds + 0.5) + config.closed_seconds + 10
        if backend != "sqlite" and config.only is None:
            phases += config.bar_seconds + max(20.0, config.bar_seconds)
        count = config.sqlite_repetitions if backend == "sqlite" else config.repetitions
        for rep in range(1, count + 1):
            self.ensure_time(self.rep_estimate(backend, phases), f"{backend}, repetition {rep}")
            reps.append(await self.timed_rep(backend, self.platica_rep(backend, rep)))

    async def run_split_worker(self) -> None:
        """PostgreSQL with `serve --no-worker` + one `platica worker` process."""
        config = self.config
        reps: list[dict[str, Any]] = []
        self.results["scenarios"][SPLIT] = reps
        phases = 40 + len(config.rates) * (config.step_seconds + 0.5) + config.closed_seconds
        for rep in range(1, config.split_worker_repetitions + 1):
            self.ensure_time(self.rep_estimate(SPLIT, phases), f"{SPLIT}, repetition {rep}")
            entry = self.platica_rep("postgres", 100 + rep, worker=False)
            reps.append(await self.timed_rep(SPLIT, entry))

    async def run_scale(self, factor: int) -> None:
        """With `factor`x stored history: the e2e steady phase `repetitions` times (no backlog
        yet), then the closed loop `repetitions` times, then the drain and the checks; one
        database and process per factor."""
        assert self.pg is not None
        config = self.config
        messages = config.base_messages * factor
        per_rep = config.e2e_seconds + 4 + config.closed_seconds + 3
        # The drain after the closed loops: as long as PostgreSQL's took so far, at a guess.
        self.ensure_time(
            25 + messages / 15000 + config.repetitions * per_rep + self.drain_estimate("postgres"),
            f"scale {factor}x",
        )
        database_url = self.pg.create_migrated(f"scale_{factor}")
        serve: Child | None = None
        reps: list[dict[str, Any]] = [{} for _ in range(config.repetitions)]
        self.results["scale"][str(factor)] = {"messages": messages, "reps": reps}
        # Counted per factor, like a repetition's (and each poll stays small).
        await self.fake(self.twilio_url, {"reset": True})
        await self.fake(self.openai_url, {"reset": True})
        try:
            serve, base_url, _ = await self.start_platica(f"platica-scale-{factor}", database_url)
            account = await self.read_account(database_url, None)
            debounce = account["sms_channels"][0]["debounce_seconds"]
            seconds = await asyncio.to_thread(database.seed_history, database_url, messages)
            rows = await asyncio.to_thread(database.count_rows, database_url)
            # The checks look at what this scenario stores, not at the seeded history.
            seeded = await asyncio.to_thread(database.last_message_id, database_url)
            self.results["scale"][str(factor)].update(seed_seconds=seconds, rows=rows)
            log(f"scale {factor}x: seeded {rows['messages']:,} messages in {seconds:.1f} s")
            pids = self.pids(serve)
            await self.watch_postgres(database_url, None)
            acked: list[WebhookRequest] = await self.warm_up(base_url, pids)
            for entry in reps:
                steady = await self.e2e_steady(base_url, pids, debounce)
                acked += steady.pop("acked")
                entry["steady"] = steady
                log(
                    f"scale {factor}x: e2e steady {steady['replies']}/{steady['messages']} "
                    f"answered, overhead p50 {steady['overhead_ms']['p50']:.1f} ms"
                )
            for entry in reps:
                await self.settle(base_url)
                result, usage = await self.closed_phase(
                    base_url, config.closed_concurrency, config.closed_seconds, pids
                )
                acked += [s.request for s in result.ok]
                entry["closed"] = {**result.summary(), "usage": asdict(usage)}
                log(
                    f"scale {factor}x: closed loop {result.achieved_rate:,.0f}/s, "
                    f"p99 {result.latency(99):.1f} ms"
                )
            drain, sent = await self.drain(pids, f"scale {factor}x", None)
            ledger = await self.ledger(database_url, None, seeded)
            drain.update(_drain_rates(drain, sent, ledger))
            log(f"scale {factor}x: {_drain_line(drain)}")
            check = checks.exactly_once(ledger, [(r.sid, r.sender) for r in acked], sent)
            log(f"scale {factor}x: {_checks_line(check)}")
            self.results["scale"][str(factor)].update(drain=drain, checks=check)
        finally:
            await self.unwatch_postgres()
            if serve is not None:
                self.stop_child(serve)
            self.pg.drop(database_url)

    async def run_profile(self) -> None:
        """py-spy on `platica serve` (PostgreSQL) under the bar's arrival rate."""
        assert self.pg is not None
        py_spy = shutil.which("py-spy") or shutil.which(
            "py-spy", path=str(Path(sys.executable).parent)
        )
        if py_spy is None:
            self.results["notes"].append(
                "--profile: py-spy not found (pip install py-spy); no profile taken"
            )
            return
        config = self.config
        self.ensure_time(40 + config.profile_seconds, "profile")
        database_url = self.pg.create_migrated("profile")
        serve: Child | None = None
        try:
            serve, base_url, _ = await self.start_platica("platica-profile", database_url)
            account = await self.read_account(database_url, None)
            pids = self.pids(serve)
            await self.watch_postgres(database_url, None)
            # Warm up: pools, imports, caches.
            await self.e2e_steady(base_url, pids, account["sms_channels"][0]["debounce_seconds"])
            raw = self.work_dir / "profile.txt"
            recorder = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(serve.pid),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--nolineno",
                    "--full-filenames",
                    "--gil",
                    "--duration",
                    str(int(config.profile_seconds)),
                    "--output",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                await asyncio.sleep(0.5)
                result, usage = await self.open_phase(
                    base_url, config.bar_rate, config.profile_seconds - 1, pids
                )
                await asyncio.to_thread(recorder.wait, config.profile_seconds + 30)
            finally:
                if recorder.poll() is None:
                    recorder.kill()
            self.results["profile"] = {
                "rate": config.bar_rate,
                "ack": result.summary(),
                "cpu_percent": usage.cpu_percent.get("platica"),
                **report.summarize_profile(await asyncio.to_thread(_read, raw)),
            }
            log(f"profile: {raw}")
        finally:
            await self.unwatch_postgres()
            if serve is not None:
                self.stop_child(serve)
            self.pg.drop(database_url)

    async def run_broadcast(self) -> None:
        """Issue 15: one template broadcast at `broadcast_mps` to `broadcast_recipients`, some
        of them opted out, handed over by a `platica worker` beside `serve --no-worker`; the
        worker killed (SIGKILL) once `broadcast_kill_share` was sent and started again at once;
        then every recipient checked at the fake Twilio, the pace over any 5 s, and the
        progress the API shows."""
        assert self.pg is not None
        config = self.config
        recipients = [f"+3465{index:07d}" for index in range(config.broadcast_recipients)]
        step = max(1, len(recipients) // max(1, config.broadcast_opted_out))
        opted_out = recipients[::step][: config.broadcast_opted_out]
        expected = len(recipients) - len(opted_out)
        self.ensure_time(40 + expected / config.broadcast_mps + 45, "broadcast")
        database_url = self.pg.create_migrated("broadcast")
        await self.fake(self.twilio_url, {"reset": True})
        await self.fake(self.openai_url, {"reset": True})
        # Twilio has the template too (it refuses an unknown ContentSid).
        registered = await self.http.post(
            self.twilio_url + "/_fake/content",
            json={key: BROADCAST_TEMPLATE[key] for key in ("sid", "name", "body", "variables")},
        )
        registered.raise_for_status()
        port = free_port()
        env = {**self.serve_env(database_url, port), "PLATICA_ADMIN_TOKEN": BROADCAST_TOKEN}
        serve: Child | None = None
        workers: list[Child] = []

        async def start_worker(name: str) -> None:
            workers.append(self.start_child(name, ["platica", "worker"], env))
            await workers[-1].wait_log("startup.ready")

        try:
            serve = self.start_child(
                "platica-broadcast", ["platica", "serve", "--port", str(port), "--no-worker"], env
            )
            base_url = f"http://127.0.0.1:{port}"
            await serve.wait_http(base_url + "/healthz")
            await start_worker("platica-broadcast-worker-1")
            account_id = await asyncio.to_thread(
                database.prepare_broadcast,
                database_url,
                config.broadcast_mps,
                BROADCAST_TEMPLATE,
                opted_out,
            )
            api = httpx.AsyncClient(
                base_url=base_url,
                headers={"Authorization": f"Bearer {BROADCAST_TOKEN}"},
                params={"account_id": account_id},
                timeout=30,
            )
            try:
                started = time.monotonic()
                response = await api.post(
                    "/api/whatsapp/broadcasts",
                    json={
                        "template": BROADCAST_TEMPLATE["name"],
                        "recipients": [
                            {"to": number, "variables": {"1": f"cliente {index}"}}
                            for index, number in enumerate(recipients)
                        ],
                    },
                )
                response.raise_for_status()
                broadcast_id = int(response.json()["id"])
                log(
                    f"broadcast {broadcast_id}: {len(recipients)} recipients "
                    f"({len(opted_out)} opted out) at {config.broadcast_mps:g}/s"
                )
                kill_at = round(config.broadcast_kill_share * expected)
                deadline = min(started + 2 * expected / config.broadcast_mps + 30, self.deadline)
                while len(await self.sent()) < kill_at:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the broadcast did not reach {kill_at} sent")
                    await asyncio.sleep(0.2)
                killed = workers[-1]
                assert killed.process is not None
                killed.process.send_signal(signal.SIGKILL)
                await asyncio.to_thread(killed.process.wait, 10)
                killed_at = time.monotonic()
                sent_at_kill = len(await self.sent())
                log(f"broadcast: worker killed (SIGKILL) with {sent_at_kill} sent; restarting")
                await start_worker("platica-broadcast-worker-2")
                restarted_seconds = time.monotonic() - killed_at
                deadline = min(time.monotonic() + config.broadcast_wait_seconds, self.deadline)
                left = await asyncio.to_thread(
                    database.broadcast_unfinished, database_url, broadcast_id
                )
                while left and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    left = await asyncio.to_thread(
                        database.broadcast_unfinished, database_url, broadcast_id
                    )
                finished = time.monotonic()
                sent = await self.sent()
                progress = (await api.get(f"/api/whatsapp/broadcasts/{broadcast_id}")).json()
            finally:
                await api.aclose()
            check = checks.broadcast(sent, recipients, opted_out, progress, config.broadcast_mps)
            last_sent = max((float(m["received_at"]) for m in sent), default=finished)
            self.results["broadcast"] = {
                **check,
                "killed_after_sent": sent_at_kill,
                "restart_seconds": restarted_seconds,
                "unfinished_at_the_end": left,
                "total_seconds": (last_sent - started) if sent else None,
                "ideal_seconds": expected / config.broadcast_mps,
                "recoveries": workers[-1].log_tail(10_000_000).count("reply.recovered"),
            }
            log(f"broadcast: {_broadcast_line(self.results['broadcast'])}")
        finally:
            for worker in workers:
                self.stop_child(worker)
            if serve is not None:
                self.stop_child(serve)
            self.pg.drop(database_url)

    # -- the whole run ------------------------------------------------------------------------

    def collect_meta(self) -> None:
        meta = self.results["meta"]
        meta["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        meta["python"] = platform.python_version()
        meta["cpus"] = os.cpu_count()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    meta["cpu_model"] = line.split(":", 1)[1].strip()
                    break
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal"):
                    meta["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
            meta["load_average_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
        # Plática's own defaults, for the report (read, not copied: they change).
        with contextlib.suppress(ImportError, AttributeError, KeyError):
            from platica.config import Settings

            fields = Settings.model_fields
            meta["worker_concurrency_default"] = fields["WORKER_CONCURRENCY"].default
            meta["defaults"] = {
                name: str(fields[name].default)
                for name in fields
                if name == "WORKER_CONCURRENCY" or name.startswith("RATE_LIMIT_")
            }
        with contextlib.suppress(ImportError, AttributeError):
            from platica.models import ChannelConfig

            meta["debounce_default"] = ChannelConfig.__table__.c.debounce_seconds.default.arg
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            meta["commit"] = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--", "src"],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            meta["src_dirty"] = bool(dirty)

    async def run(self) -> None:
        config = self.config
        self.collect_meta()
        self.pg = database.PostgresServer(config.database_url)
        unavailable = self.pg.available()
        if unavailable is not None:
            self.results["notes"].append(f"PostgreSQL unavailable ({unavailable}): SQLite only")
            log(f"PostgreSQL unavailable: {unavailable}")
            self.pg = None
        else:
            self.results["meta"]["postgres"] = self.pg.version()
            self.results["meta"]["postgres_settings"] = self.pg.settings()
            self.postmaster = await asyncio.to_thread(
                database.postgres_server_pid, config.database_url
            )
            self.results["meta"]["postgres_server_cpu"] = self.postmaster is not None
            if self.postmaster is None:
                self.results["notes"].append(
                    "PostgreSQL CPU not measured: the server's processes are not in this "
                    "machine's /proc (another host or container?)"
                )
        await self.start_fakes()
        if config.only == "broadcast":
            self.results["notes"].append(
                "--only broadcast: only the broadcast phase was run; the other bars are not "
                "measured"
            )
        elif config.only is not None:
            self.results["notes"].append(
                f"--only {config.only}: only the warm-up, e2e steady and voice-note phases were "
                "run (with their checks); the bars that need the rest are not measured"
            )
        steps: list[tuple[str, Callable[[], Any]]] = []
        if config.baselines:
            steps.append(("bare ASGI baseline", self.run_baselines))
        if self.pg is not None:
            if config.baselines:
                steps.append(("insert probe", self.run_insert_probe))
            started = time.monotonic()
            await asyncio.to_thread(
                self.pg.create_migrated_template, clean_env(), self.work_dir / "migrate.log"
            )
            self.results["meta"]["migrate_seconds"] = time.monotonic() - started
        # PostgreSQL (the bars), its scale scenarios, then the rest (for information): with a
        # drain in every repetition, the time budget may not reach the last ones.
        backends = [b for b in config.backends if b != "postgres" or self.pg is not None]
        if "postgres" in backends:
            steps.append(("postgres", lambda: self.run_backend("postgres")))
        if self.pg is not None:
            for factor in config.scale_factors:
                steps.append((f"scale {factor}x", lambda f=factor: self.run_scale(f)))  # type: ignore[misc]
        if self.pg is not None and config.broadcast_recipients > 0:
            steps.append(("broadcast", self.run_broadcast))
        for backend in backends:
            if backend != "postgres":
                steps.append((backend, lambda b=backend: self.run_backend(b)))  # type: ignore[misc]
        if self.pg is not None:
            if config.split_worker and "postgres" in config.backends:
                steps.append((SPLIT, self.run_split_worker))
            if config.profile:
                steps.append(("profile", self.run_profile))
        for name, step in steps:
            try:
                await step()
            except OutOfTime:
                continue
            except Exception as error:  # one broken scenario must not lose the others
                self.results["notes"].append(f"{name} failed: {error!r}")
                log(f"{name} FAILED: {error!r}")
        self.results["meta"]["total_seconds"] = self.elapsed()

    async def close(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        await self.http.aclose()
        if self.pg is not None:
            self.pg.drop_all()


def _drain_rates(
    drain: dict[str, Any], sent: list[dict[str, Any]], ledger: checks.Ledger
) -> dict[str, Any]:
    """The drain's replies (sent after it began, the fakes at 0) and their pace: the instant-LLM
    replies per second over the steady middle, and from the start to the last reply."""
    times = checks.reply_times(sent, ledger, since=drain["started"])
    if drain["complete"]:
        seconds = (times[-1] - drain["started"]) if times else 0.0
    else:
        seconds = drain["waited_seconds"]
    return {
        "replies": len(times),
        "seconds": seconds,
        "replies_per_second": checks.steady_rate(times),
        "start_to_last_rate": (len(times) / seconds) if times and seconds > 0 else None,
    }


def _answered(
    acked: Sequence[Sample], replies: dict[str, list[float]], waits: float
) -> dict[str, Any]:
    """Each acknowledged message's first reply: its time after the ack (end to end), and that
    less `waits` (the fakes' latencies and the debounce): Plática's own overhead; with the
    messages not answered, and those answered more than once."""
    overheads, end_to_end = [], []
    for sample in acked:
        received = replies.get(sample.request.sender)
        if received:
            end_to_end.append((min(received) - sample.done) * 1000)
            overheads.append((min(received) - sample.done - waits) * 1000)
    return {
        "messages": len(acked),
        "replies": len(overheads),
        "missing": sum(1 for s in acked if not replies.get(s.request.sender)),
        "duplicates": sum(1 for s in acked if len(replies.get(s.request.sender, [])) > 1),
        "overhead_ms": {
            "p50": percentile(overheads, 50),
            "p90": percentile(overheads, 90),
            "max": max(overheads, default=float("nan")),
            "min": min(overheads, default=float("nan")),
        },
        "reply_latency_ms_p50": percentile(end_to_end, 50),
    }


def _voice_line(voice: dict[str, Any], steady: dict[str, Any]) -> str:
    """The voice-note phase's outcome, for the log."""
    states = ", ".join(f"{n} {state}" for state, n in sorted(voice["media_states"].items()))
    return (
        f"voice notes {voice['replies']}/{voice['messages']} answered ({states}), overhead p50 "
        f"{voice['overhead_ms']['p50']:.1f} ms (p90 {voice['overhead_ms']['p90']:.1f} ms); ack "
        f"p99 {voice['ack']['p99_ms']:.1f} ms (text: {steady['ack']['p99_ms']:.1f} ms)"
    )


def _broadcast_line(result: dict[str, Any]) -> str:
    """The broadcast phase's outcome, for the log."""
    return (
        f"{result['messages']} messages to {result['recipients']} recipients "
        f"({result['opted_out']} opted out): {result['duplicates']} duplicates, "
        f"{result['missing']} missing, {result['to_opted_out']} to the opted-out; busiest "
        f"{result['window_seconds']:g} s {result['peak_rate']:.1f}/s = "
        f"{100 * (result['peak_ratio'] or 0):.0f} % of {result['mps']:g}/s; progress "
        f"{'matches' if result['progress_matches'] else 'DOES NOT match'} Twilio's; "
        f"{result['total_seconds'] or 0:.1f} s in all" + (" — ok" if result["ok"] else " — FAILED")
    )


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}/s"


def _drain_line(drain: dict[str, Any]) -> str:
    """The drain's outcome, for the log."""
    line = (
        f"drain: backlog {drain['backlog']}, {drain['replies']} replies in "
        f"{drain['seconds']:.1f} s, steady {_rate(drain.get('replies_per_second'))}"
    )
    if drain["stopped_by"]:
        line += (
            f" (stopped by the {drain['stopped_by']}, {drain['unsettled_at_the_end']} unsettled)"
        )
    return line


def _checks_line(check: dict[str, Any]) -> str:
    """The exactly-once check's outcome, for the log."""
    line = (
        f"{check['answered_once']}/{check['acknowledged']} answered once, "
        f"{check['answered_twice_or_more']} twice, {check['unanswered']} unanswered "
        f"({check['pending']} pending, {check['skipped']} skipped, {check['failed']} failed), "
        f"{check['fallback']} by the fallback; {check['replies']} replies"
    )
    if check["skipped_notes"]:
        line += "; skipped: " + ", ".join(
            f"{n} x {note!r}" for note, n in check["skipped_notes"].items()
        )
    return line + (" — exactly once" if check["exactly_once"] else " — NOT exactly once")


def _bar_line(bar: dict[str, Any]) -> str:
    """The one-account load's outcome, for the log."""
    ack = bar["ack"]
    return (
        f"one account {ack['target_rate']:g}/s: {ack['ok']}/{ack['requests']} acked, "
        f"p99 {ack['p99_ms']:.1f} ms; {bar['replies_with_latency']} replies with the fakes' "
        f"latency, sustained after the load {_rate(bar['sustained_rate'])} (during the load "
        f"{_rate(bar['during_load_rate'])}, first to last "
        f"{_rate(bar['first_to_last_rate'])}); waited {bar['wait_seconds']:.1f} s; "
        + _checks_line(bar["checks"])
    )


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = Config()
    parser.add_argument("--repetitions", type=int, default=defaults.repetitions)
    parser.add_argument(
        "--sqlite-repetitions", type=int, default=defaults.sqlite_repetitions, metavar="N"
    )
    parser.add_argument(
        "--bar-seconds",
        type=float,
        default=defaults.bar_seconds,
        help="length of the one-account load at the bar's rate (SPEC §6: 15 s); 0 for none",
    )
    parser.add_argument(
        "--sustain-seconds",
        type=float,
        default=defaults.sustain_seconds,
        help="after the one-account load, at most this long with the fakes at their latency",
    )
    parser.add_argument(
        "--burst-share",
        type=float,
        default=defaults.burst_share,
        help="share of the one-account load's senders who write "
        f"{defaults.burst_sizes[0]}-{defaults.burst_sizes[1]} messages "
        f"{defaults.burst_gap:g} s apart",
    )
    parser.add_argument(
        "--rates",
        default=",".join(str(int(r)) for r in defaults.rates),
        help="open-loop arrival rates for the ack sweep, per second",
    )
    parser.add_argument("--step-seconds", type=float, default=defaults.step_seconds)
    parser.add_argument("--backends", default=",".join(defaults.backends))
    parser.add_argument(
        "--scale",
        default=",".join(str(f) for f in defaults.scale_factors),
        help="history factors (x base messages); empty for none",
    )
    parser.add_argument("--client", choices=["raw", "httpx"], default=defaults.client)
    parser.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the bare ASGI app and the INSERT probe",
    )
    parser.add_argument(
        "--split-worker",
        action=argparse.BooleanOptionalAction,
        default=defaults.split_worker,
        help="also run PostgreSQL with serve --no-worker + platica worker (last, 1 repetition)",
    )
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=defaults.worker_concurrency,
        metavar="N",
        help="WORKER_CONCURRENCY for every platica serve/worker (default: Plática's own)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=defaults.drain_seconds,
        help="at the end of each repetition, how long to wait for every acknowledged "
        "message's reply",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the 300/s phase")
    parser.add_argument(
        "--budget",
        type=float,
        default=defaults.budget_seconds,
        help="seconds for the whole run; later scenarios are skipped past it",
    )
    parser.add_argument("--llm-latency", type=float, default=defaults.llm_latency)
    parser.add_argument("--twilio-latency", type=float, default=defaults.twilio_latency)
    parser.add_argument(
        "--media-latency",
        type=float,
        default=defaults.media_latency,
        help="seconds the fake Twilio's media storage host takes to answer",
    )
    parser.add_argument(
        "--voice-seconds",
        type=float,
        default=defaults.voice_seconds,
        help=f"length of the voice-note phase ({defaults.voice_rate:g} notes/s); 0 for none",
    )
    parser.add_argument(
        "--only",
        choices=["voice", "broadcast"],
        default=None,
        help="voice: only the warm-up, e2e steady and voice-note phases of each backend, with "
        "their checks (no baselines, one-account load, sweep, closed loop or scale); "
        "broadcast: only the broadcast phase (PostgreSQL)",
    )
    parser.add_argument(
        "--broadcast-recipients",
        type=int,
        default=defaults.broadcast_recipients,
        help=f"the broadcast phase's recipients (at {defaults.broadcast_mps:g}/s); 0 for none",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", os.environ.get("TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
        ),
    )
    parser.add_argument("--output", default=defaults.output)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 repetition, 2 s steps, a 5 s one-account load, no scale: a smoke test of the "
        "harness",
    )
    args = parser.parse_args(argv)
    config = Config(
        repetitions=args.repetitions,
        sqlite_repetitions=args.sqlite_repetitions,
        bar_seconds=args.bar_seconds,
        sustain_seconds=args.sustain_seconds,
        burst_share=args.burst_share,
        rates=[float(r) for r in args.rates.split(",") if r],
        step_seconds=args.step_seconds,
        backends=[b for b in args.backends.split(",") if b],
        scale_factors=[int(f) for f in args.scale.split(",") if f],
        client=args.client,
        baselines=args.baselines,
        split_worker=args.split_worker,
        worker_concurrency=args.worker_concurrency,
        drain_seconds=args.drain_seconds,
        profile=args.profile,
        budget_seconds=args.budget,
        llm_latency=args.llm_latency,
        twilio_latency=args.twilio_latency,
        media_latency=args.media_latency,
        voice_seconds=args.voice_seconds,
        broadcast_recipients=args.broadcast_recipients,
        only=args.only,
        database_url=args.database_url,
        output=args.output,
    )
    if args.quick:
        config.repetitions, config.step_seconds, config.closed_seconds = 1, 2.0, 2.0
        config.sqlite_repetitions = 1
        config.e2e_seconds, config.scale_factors = 3.0, []
        config.bar_seconds, config.sustain_seconds = 5.0, 30.0
        config.probe_seconds = 1.0
    if config.only == "voice":
        config.baselines, config.scale_factors = False, []
        config.split_worker, config.profile = False, False
        config.broadcast_recipients = 0
    if config.only == "broadcast":
        config.baselines, config.scale_factors, config.backends = False, [], []
        config.split_worker, config.profile = False, False
    return config


async def amain(config: Config) -> Path:
    work_dir = Path(tempfile.mkdtemp(prefix="platica-bench-"))
    log(f"work directory (logs, raw results): {work_dir}")
    bench = Bench(config, work_dir)
    try:
        await bench.run()
    finally:
        await bench.close()
    (work_dir / "results.json").write_text(json.dumps(bench.results, indent=2, default=str))
    output = REPO / config.output
    report.write(bench.results, output)
    log(f"wrote {output} in {bench.elapsed():.0f} s (raw results: {work_dir / 'results.json'})")
    broadcast = bench.results["broadcast"]
    if broadcast is not None and not broadcast["ok"]:
        # Not a figure to read on a busy machine: a duplicate, a lost recipient, an overshoot.
        raise SystemExit(f"the broadcast's checks failed: {_broadcast_line(broadcast)}")
    return output


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(amain(config))


if __name__ == "__main__":
    main()
