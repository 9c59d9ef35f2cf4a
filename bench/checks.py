"""Exactly once, checked in the database and at the fake Twilio; replies per second.

A reply answers a *batch*: the conversation's messages that were waiting when the worker took
it (a burst, with the debounce). Its outbound rows (one per part) point with `reply_to_id` at the
batch's last message, so in a conversation the reply that covers an inbound message is the one
anchored on the first message at or after it. A message is *answered once* when

- it is stored (by its MessageSid) with `reply_state = 'answered'`;
- a reply covers it, and every part of that reply reached the fake Twilio (its SID is stored);
- that reply is the LLM's (author `ai`), not the fallback message;
- its sender got nothing from the fake Twilio that the database does not know (a second send of
  a part gets a new SID at Twilio, which the database never stores).

Anything else is counted by what happened: not stored, still pending, skipped or failed (with the
database's `note`, so a silent drop such as "rate limited" shows as such), marked answered with
no reply or with a reply not sent, answered by the fallback, or answered twice.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.stats import percentile


@dataclass(frozen=True, slots=True)
class InboundRow:
    id: int
    conversation_id: int
    reply_state: str | None
    note: str | None


@dataclass(frozen=True, slots=True)
class PartRow:
    id: int
    conversation_id: int
    reply_to_id: int | None
    part: int
    twilio_sid: str | None
    author: str


@dataclass
class Ledger:
    """What the database says about the messages stored since the scenario began."""

    inbound: dict[str, InboundRow] = field(default_factory=dict)  # by MessageSid
    # Per conversation, the inbound messages replies are anchored on, in order.
    anchors: dict[int, list[int]] = field(default_factory=dict)
    # Per anchor, the reply's parts in order.
    replies: dict[int, list[PartRow]] = field(default_factory=dict)
    outbound_sids: set[str] = field(default_factory=set)
    first_part_sids: set[str] = field(default_factory=set)
    # Outbound messages that answer nothing (no `reply_to_id`).
    unanchored: int = 0

    @classmethod
    def build(
        cls,
        inbound: Iterable[tuple[int, int, str | None, str | None, str | None]],
        outbound: Iterable[tuple[int, int, int | None, int, str | None, str]],
    ) -> Ledger:
        """From rows (id, conversation_id, twilio_sid, reply_state, note) of inbound messages
        and (id, conversation_id, reply_to_id, part, twilio_sid, author) of outbound ones."""
        ledger = cls()
        for id_, conversation_id, sid, state, note in inbound:
            if sid is not None:
                ledger.inbound[sid] = InboundRow(id_, conversation_id, state, note)
        anchors: dict[int, set[int]] = defaultdict(set)
        for id_, conversation_id, reply_to_id, part, sid, author in outbound:
            row = PartRow(id_, conversation_id, reply_to_id, part, sid, author)
            if sid is not None:
                ledger.outbound_sids.add(sid)
                if part == 0:
                    ledger.first_part_sids.add(sid)
            if reply_to_id is None:
                ledger.unanchored += 1
                continue
            anchors[conversation_id].add(reply_to_id)
            ledger.replies.setdefault(reply_to_id, []).append(row)
        ledger.anchors = {c: sorted(ids) for c, ids in anchors.items()}
        for parts in ledger.replies.values():
            parts.sort(key=lambda p: p.part)
        return ledger

    def covering(self, message: InboundRow) -> int | None:
        """The anchor of the reply that covers this inbound message, if any."""
        anchors = self.anchors.get(message.conversation_id, [])
        index = bisect.bisect_left(anchors, message.id)
        return anchors[index] if index < len(anchors) else None


def exactly_once(
    ledger: Ledger, messages: Sequence[tuple[str, str]], sent: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Check acknowledged `messages` (MessageSid, sender) against the database and the fake
    Twilio's `sent` records; the counts, and `exactly_once` when every one was answered once."""
    senders = {sender for _, sender in messages}
    sent_here = [m for m in sent if m["to"] in senders]
    at_twilio = Counter(m["sid"] for m in sent_here)
    unknown = Counter(m["to"] for m in sent_here if m["sid"] not in ledger.outbound_sids)
    counts: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    covering: dict[str, set[int]] = defaultdict(set)
    for sid, sender in messages:
        row = ledger.inbound.get(sid)
        if row is None:
            counts["not_stored"] += 1
            continue
        counts["stored"] += 1
        if row.reply_state == "skipped":
            skipped[row.note or "(no note)"] += 1
            continue
        if row.reply_state == "failed":
            failed[row.note or "(no note)"] += 1
            continue
        if row.reply_state != "answered":
            counts["pending"] += 1
            continue
        anchor = ledger.covering(row)
        if anchor is None:
            counts["answered_without_reply"] += 1
            continue
        covering[sender].add(anchor)
        parts = ledger.replies[anchor]
        if not all(p.twilio_sid and at_twilio[p.twilio_sid] == 1 for p in parts):
            counts["reply_not_sent"] += 1
        elif unknown[sender]:
            counts["answered_twice_or_more"] += 1
        elif parts[0].author != "ai":
            counts["fallback"] += 1
        else:
            counts["answered_once"] += 1
    per_sender = Counter(sender for _, sender in messages)
    bursters = [sender for sender, n in per_sender.items() if n > 1]
    unanswered = (
        counts["not_stored"]
        + counts["pending"]
        + sum(skipped.values())
        + sum(failed.values())
        + counts["answered_without_reply"]
        + counts["reply_not_sent"]
    )
    result: dict[str, Any] = {
        "acknowledged": len(messages),
        "stored": counts["stored"],
        "answered_once": counts["answered_once"],
        "answered_twice_or_more": counts["answered_twice_or_more"],
        "fallback": counts["fallback"],
        "unanswered": unanswered,
        "not_stored": counts["not_stored"],
        "pending": counts["pending"],
        "skipped": sum(skipped.values()),
        "skipped_notes": dict(skipped.most_common()),
        "failed": sum(failed.values()),
        "failed_notes": dict(failed.most_common()),
        "answered_without_reply": counts["answered_without_reply"],
        "reply_not_sent": counts["reply_not_sent"],
        "replies": len({anchor for anchors in covering.values() for anchor in anchors}),
        "twilio_messages": len(sent_here),
        "sends_not_in_database": sum(unknown.values()),
        "senders": len(per_sender),
        "burst_senders": len(bursters),
        "burst_messages": sum(per_sender[s] for s in bursters),
        "burst_replies": sum(len(covering[s]) for s in bursters),
        "bursts_answered_in_parts": sum(1 for s in bursters if len(covering[s]) > 1),
    }
    result["exactly_once"] = (
        counts["answered_once"] == len(messages) and result["sends_not_in_database"] == 0
    )
    return result


def merge(checks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several checks' counts (notes merged), `exactly_once` when all hold."""
    total: dict[str, Any] = {}
    everything = True
    for check in checks:
        everything = everything and bool(check.get("exactly_once"))
        for key, value in check.items():
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, dict):
                notes = total.setdefault(key, {})
                for note, n in value.items():
                    notes[note] = notes.get(note, 0) + n
            elif isinstance(value, int | float):
                total[key] = total.get(key, 0) + value
    total["exactly_once"] = everything and bool(total)
    return total


def reply_times(
    sent: Sequence[dict[str, Any]],
    ledger: Ledger,
    recipients: set[str] | None = None,
    since: float | None = None,
    before: float | None = None,
) -> list[float]:
    """When the fake Twilio received each reply (its first part; a send the database does not
    know counts too), sorted; to `recipients` only, in [since, before) when given."""
    times = []
    for message in sent:
        if recipients is not None and message["to"] not in recipients:
            continue
        if message["sid"] in ledger.outbound_sids and message["sid"] not in ledger.first_part_sids:
            continue
        at = float(message["received_at"])
        if (since is None or at >= since) and (before is None or at < before):
            times.append(at)
    return sorted(times)


# Below this many replies a rate says little.
MIN_REPLIES_FOR_RATE = 50


def steady_rate(times: Sequence[float], low: float = 10.0, high: float = 90.0) -> float | None:
    """Replies per second over the steady middle: the replies sent between the `low`th and the
    `high`th percentile of the send times, over the time between those two; None for too few."""
    if len(times) < MIN_REPLIES_FOR_RATE:
        return None
    ordered = sorted(times)
    start, end = percentile(ordered, low), percentile(ordered, high)
    inside = sum(1 for t in ordered if start <= t <= end)
    return (inside - 1) / (end - start) if end > start else None


def span_rate(times: Sequence[float]) -> float | None:
    """Replies per second from the first to the last; None for too few."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


# --- Broadcasts ---------------------------------------------------------------------------------

# The bar on a broadcast's pace: over any BROADCAST_WINDOW_SECONDS, Twilio gets at most
# BROADCAST_PACE_BAR times the channel's broadcast_mps.
BROADCAST_WINDOW_SECONDS = 5.0
BROADCAST_PACE_BAR = 1.10
PROGRESS_FIGURES = ("status", "total", "queued", "sent", "delivered", "read", "failed", "skipped")


def busiest_window(times: Sequence[float], seconds: float = BROADCAST_WINDOW_SECONDS) -> int:
    """The most of `times` within any `seconds` (a window starting at one of them)."""
    ordered = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(ordered):
        while at - ordered[first] >= seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


def broadcast(
    sent: Sequence[dict[str, Any]],
    recipients: Sequence[str],
    opted_out: Sequence[str],
    progress: dict[str, Any],
    mps: float,
) -> dict[str, Any]:
    """A broadcast checked at the fake Twilio (`sent`, its "to" as whatsapp:+E.164): every
    recipient not opted out got exactly one message, nobody else any; the busiest
    BROADCAST_WINDOW_SECONDS against the pace; and the API's progress figures against what
    Twilio accepted. `ok` when all hold."""
    per_recipient = Counter(m["to"].removeprefix("whatsapp:") for m in sent)
    skipped = set(opted_out)
    expected = [number for number in recipients if number not in skipped]
    busiest = busiest_window([float(m["received_at"]) for m in sent])
    peak_rate = busiest / BROADCAST_WINDOW_SECONDS
    accepted = progress.get("sent", 0) + progress.get("delivered", 0) + progress.get("read", 0)
    result: dict[str, Any] = {
        "recipients": len(recipients),
        "opted_out": len(skipped),
        "messages": len(sent),
        "received": sum(1 for n in expected if per_recipient[n] >= 1),
        "duplicates": sum(count - 1 for count in per_recipient.values() if count > 1),
        "missing": sum(1 for n in expected if per_recipient[n] == 0),
        "to_opted_out": sum(per_recipient[n] for n in skipped),
        "unexpected": sum(c for n, c in per_recipient.items() if n not in set(recipients)),
        "busiest_window": busiest,
        "window_seconds": BROADCAST_WINDOW_SECONDS,
        "peak_rate": peak_rate,
        "mps": mps,
        "peak_ratio": peak_rate / mps if mps else None,
        "progress": {key: progress.get(key) for key in PROGRESS_FIGURES},
        "progress_matches": (
            progress.get("status") == "done"
            and accepted == len(sent)
            and progress.get("skipped") == len(skipped)
            and progress.get("total") == len(recipients)
            and progress.get("queued") == 0
            and progress.get("failed") == 0
        ),
    }
    result["within_pace"] = peak_rate <= BROADCAST_PACE_BAR * mps
    result["ok"] = bool(
        result["duplicates"] == 0
        and result["missing"] == 0
        and result["to_opted_out"] == 0
        and result["unexpected"] == 0
        and result["within_pace"]
        and result["progress_matches"]
    )
    return result
