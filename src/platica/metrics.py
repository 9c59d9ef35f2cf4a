"""Prometheus metrics, served at /metrics by ops.py, the worker processes' included.

One process (SQLite, or `platica serve --no-worker`): its metrics live in its memory, as usual.
Split (PostgreSQL: `platica serve` and its worker child, or `platica worker`s): each worker keeps
its metrics in files of PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, chosen
when the process starts, by the variable being set); `platica serve` picks that directory (a
fresh one unless given), removes what dead processes left there, and passes it to its child.
Its own metrics stay in memory, as a file-backed increment costs more (a lock and a write to a
memory-mapped file: see README, Operations), and /metrics adds up the two (`exposition`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# What a gauge shows once the processes' values are put together (see `exposition`):
# set by the process serving /metrics, at each scrape: its value, the latest one measured;
SCRAPED: Final = "livemostrecent"
# set by each worker for what it runs: the highest value among the live processes.
HIGHEST: Final = "livemax"

if os.environ.get(MULTIPROC_DIR):
    # prometheus_client writes its files there from the first metric on (below).
    os.makedirs(os.environ[MULTIPROC_DIR], exist_ok=True)

WEBHOOKS = Counter(
    "platica_webhooks_total",
    "Webhook requests by endpoint and outcome.",
    ["endpoint", "outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "platica_webhook_seconds",
    "Time to acknowledge a webhook.",
    ["endpoint"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REPLY_OUTCOMES = (
    "ai",
    "fallback",
    "busy",
    "keyword",
    "skipped",
    "flood",
    "send_failed",
    "refused",
)
REPLIES = Counter(
    "platica_replies_total",
    "How inbound messages were dealt with. ai, fallback: replies stored (a burst answered "
    "together counts once); busy: the busy message, the channel's daily token budget being "
    "spent; keyword: STOP/START/HELP messages; skipped: messages not answered (opted out, "
    "closed or AI disabled); flood: messages over a sender's flood limit (stored, never "
    "answered); send_failed: reply messages Twilio refused, or given up on; refused: messages "
    "never handed to Twilio (free text outside WhatsApp's 24-hour window, or something Plática "
    "started for a contact who opted out since).",
    ["channel", "outcome"],
)
LLM_SECONDS = Histogram(
    "platica_llm_seconds",
    "Time of each LLM (Chat Completions) call, failed ones included.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30),
)
LLM_TOKENS = Counter(
    "platica_llm_tokens_total",
    "Tokens the LLM reported using, by kind (prompt or completion).",
    ["kind"],
)
TWILIO_SECONDS = Histogram(
    "platica_twilio_seconds",
    "Time of each call to Twilio's Messages API to send a message, failed ones included.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
MEDIA_KINDS = ("audio", "image", "document", "location", "other")
MEDIA_OUTCOMES = ("understood", "failed")
MEDIA_ITEMS = Counter(
    "platica_media_items_total",
    "Inbound media items by kind (audio, image, document, location, other) and outcome "
    "(understood: transcribed, read or shown to the model; failed: given up, with why).",
    ["kind", "outcome"],
)
TRANSCRIPTION_SECONDS = Histogram(
    "platica_transcription_seconds",
    "Time of each call to transcribe a voice note (each try), failed ones included.",
    buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
)
AUDIO_SECONDS = Counter(
    "platica_audio_seconds_total",
    "Seconds of voice notes transcribed (those whose length could be read).",
)
PENDING_REPLIES = Gauge(
    "platica_pending_replies",
    "Inbound messages waiting for their reply (reply_state pending), counted at each scrape.",
    multiprocess_mode=SCRAPED,
)
OLDEST_PENDING_SECONDS = Gauge(
    "platica_oldest_pending_reply_seconds",
    "How long the oldest inbound message still waiting for its reply has waited (0: none), "
    "at each scrape.",
    multiprocess_mode=SCRAPED,
)
PACED = Counter(
    "platica_replies_paced_total",
    "Times a conversation's reply waited for a pacing limit (RATE_LIMIT_PER_SENDER: sender, "
    "RATE_LIMIT_PER_ACCOUNT: account); its messages are answered later, together.",
    ["limit"],
)
BUDGETS_SPENT = Gauge(
    "platica_budgets_spent",
    "Channels (of all accounts) whose daily token budget is spent today, at each scrape: "
    "their conversations get the busy message.",
    multiprocess_mode=SCRAPED,
)
PARKED_CONVERSATIONS = Gauge(
    "platica_parked_conversations",
    "Conversations parked because their reply task kept crashing: nothing runs on them until "
    "an operator retries them. Counted at each scrape.",
    multiprocess_mode=SCRAPED,
)

OUTREACH = Counter(
    "platica_outreach_messages_total",
    "Messages Plática starts, by origin (proactive: an operator's, through POST "
    "/api/{channel}/messages or a manual reply; broadcast) and outcome. When asked for: queued "
    "(stored for sending), refused (an opted-out contact or free text outside WhatsApp's "
    "window: nothing stored), skipped (a broadcast's recipient left out: opted out, invalid or "
    "repeated), canceled (its broadcast canceled first). When sent: sent (Twilio accepted it), "
    "dry_run, failed (Twilio refused it or it was given up on), refused (checked again just "
    "before Twilio: the contact opted out, or the window closed, meanwhile). Delivery then "
    "shows in the messages' statuses.",
    ["channel", "origin", "outcome"],
)
BROADCAST_PACE = Gauge(
    "platica_broadcast_pace_mps",
    "Messages per second each channel's running broadcast is paced at (broadcast_mps; 0: none "
    "running), by channel, summed over accounts.",
    ["channel"],
    multiprocess_mode=HIGHEST,
)
OUTREACH_ORIGINS = ("proactive", "broadcast")
OUTREACH_OUTCOMES = ("queued", "refused", "skipped", "canceled", "sent", "dry_run", "failed")

# Every series from the start, at zero, so rates and alerts work before the first event.
for _channel in ("whatsapp", "sms"):
    for _outcome in REPLY_OUTCOMES:
        REPLIES.labels(_channel, _outcome)
for _kind in ("prompt", "completion"):
    LLM_TOKENS.labels(_kind)
for _channel in ("whatsapp", "sms"):
    BROADCAST_PACE.labels(_channel)
    for _origin in OUTREACH_ORIGINS:
        for _outcome in OUTREACH_OUTCOMES:
            OUTREACH.labels(_channel, _origin, _outcome)
for _limit in ("sender", "account"):
    PACED.labels(_limit)
for _kind in MEDIA_KINDS:
    for _outcome in MEDIA_OUTCOMES:
        MEDIA_ITEMS.labels(_kind, _outcome)
WEBHOOKS_UNLOGGED = Counter(
    "platica_webhooks_unlogged_total",
    "Rejected webhook requests neither written to webhook_logs nor logged: past the per-process "
    "limit on rejected requests (throttle.py), so a flood of forged posts cannot fill the disk.",
    ["endpoint"],
)
for _endpoint in ("whatsapp", "sms", "status"):
    WEBHOOKS_UNLOGGED.labels(_endpoint)

# -- several processes -----------------------------------------------------------------------------


def file_backed() -> bool:
    """Whether this process keeps its metrics in PROMETHEUS_MULTIPROC_DIR's files (decided by
    prometheus_client when it was imported, from the variable)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


_PID = re.compile(r"_(\d+)\.db$")
_OWN_DIRECTORY = re.compile(r"^platica-metrics-(\d+)-")


def remove_dead_files(directory: Path) -> list[int]:
    """Remove the files of processes no longer running (left by an earlier run: their counts
    start again from zero); the pids whose files were removed."""
    removed: set[int] = set()
    for path in directory.glob("*.db"):
        found = _PID.search(path.name)
        if found and not _alive(int(found.group(1))):
            path.unlink(missing_ok=True)
            removed.add(int(found.group(1)))
    return sorted(removed)


def share_with_workers() -> tuple[Path, bool]:
    """In `platica serve`, before its worker child starts: the directory where workers keep
    their metrics, set in this process's environment (the child inherits it), and whether it
    was created here.

    PROMETHEUS_MULTIPROC_DIR when set (separate `platica worker` processes write there too):
    the files of dead processes are removed. Otherwise a new private directory, removed by
    `stop_sharing`; those left by servers killed outright are removed here."""
    given = os.environ.get(MULTIPROC_DIR)
    if given:
        directory = Path(given)  # made at import, below, if it was not there
        remove_dead_files(directory)
        return directory, False
    root = _private_root()
    for left in root.glob("platica-metrics-*"):
        owner = _OWN_DIRECTORY.match(left.name)
        if owner and not _alive(int(owner.group(1))):
            shutil.rmtree(left, ignore_errors=True)
    directory = Path(tempfile.mkdtemp(prefix=f"platica-metrics-{os.getpid()}-", dir=root))
    os.environ[MULTIPROC_DIR] = str(directory)
    return directory, True


def _private_root() -> Path:
    """Where `platica serve` makes its workers' metrics directory: TMPDIR when set, else
    /dev/shm (memory) where there is one, else the system's temporary directory. The workers
    write those files' pages at every increment: on a disk, flushing them competes with the
    database's own flushes (measured: the webhook ack's p99 at 300/s went from ~40 ms to
    ~110 ms with the files on disk, on the 2-core bench machine)."""
    if not os.environ.get("TMPDIR"):
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
            return shm
    return Path(tempfile.gettempdir())


def stop_sharing(directory: Path, *, created: bool) -> None:
    """When `platica serve` stops: a directory it created goes."""
    if created:
        os.environ.pop(MULTIPROC_DIR, None)
        shutil.rmtree(directory, ignore_errors=True)


def process_dead(pid: int) -> None:
    """A worker exited: its live gauges go (its counters stay, so totals never go down)."""
    if os.environ.get(MULTIPROC_DIR):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


_SCRAPED_NAMES = frozenset(
    gauge._name
    for gauge in (PENDING_REPLIES, OLDEST_PENDING_SECONDS, BUDGETS_SPENT, PARKED_CONVERSATIONS)
)


def _combine(own: Metric, shared: Metric) -> Metric:
    """One family from this process's memory and the workers' files: counters and histograms
    added up (sample by sample: buckets are cumulative in both), gauges as their mode says."""
    combined = Metric(own.name, own.documentation, own.type, own.unit)
    totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for sample in shared.samples:
        totals[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    scraped = own.type == "gauge" and own.name in _SCRAPED_NAMES
    for sample in own.samples:
        if sample.name.endswith("_created"):
            continue  # a creation time means nothing for a total over processes
        key = (sample.name, tuple(sorted(sample.labels.items())))
        if key not in totals or scraped:
            totals[key] = sample.value
        elif own.type == "gauge":
            totals[key] = max(totals[key], sample.value)
        else:
            totals[key] += sample.value
    for (name, labels), value in totals.items():
        combined.samples.append(Sample(name, dict(labels), value))
    return combined


def _read_files(directory: str) -> list[Metric]:
    """Every process's metrics in `directory`'s files, added up. A file at 0 bytes is skipped:
    prometheus_client creates a process's file first and sizes it after, and reading it in
    between raises, which failed the whole scrape with a 500 while a worker started (one left
    empty by a process killed in between goes with the dead processes' files)."""
    paths = []
    for path in Path(directory).glob("*.db"):
        with contextlib.suppress(FileNotFoundError):  # its process just went
            if path.stat().st_size > 0:
                paths.append(str(path))
    merged: list[Metric] = multiprocess.MultiProcessCollector.merge(paths, accumulate=True)  # type: ignore[no-untyped-call]
    return merged


class _Files:
    """A collector: every process's metrics from the files (this one's among them)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        return iter(_read_files(self.directory))


class _Combined:
    """A collector: this process's registry with the workers' files added in."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        shared = {metric.name: metric for metric in _read_files(self.directory)}
        for metric in REGISTRY.collect():
            other = shared.pop(metric.name, None)
            yield metric if other is None else _combine(metric, other)
        yield from shared.values()


def exposition() -> bytes:
    """/metrics' text: this process's metrics, and with PROMETHEUS_MULTIPROC_DIR set, every
    worker's (and this one's, when file-backed too, counted once)."""
    directory = os.environ.get(MULTIPROC_DIR)
    if not directory or not os.path.isdir(directory):
        return generate_latest()
    registry = CollectorRegistry(auto_describe=False)
    if file_backed():
        # This process's metrics are in the files too: read them all from there.
        registry.register(_Files(directory))
    else:
        registry.register(_Combined(directory))
    return generate_latest(registry)
