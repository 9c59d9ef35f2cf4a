"""docs/benchmark.md and its chart (an SVG drawn here: no plotting dependency) from the results."""

# The report is typeset: en dashes for ranges, minus signs in formulas.
# ruff: noqa: RUF001

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from bench.checks import BROADCAST_PACE_BAR, merge
from bench.stats import fmt, fmt_spread, median, spread

FINDINGS = Path(__file__).with_name("findings.md")


def _get(entry: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(entry, dict) or key not in entry:
            return None
        entry = entry[key]
    return entry


def _values(entries: Iterable[Any], *path: str) -> list[float | None]:
    return [_get(entry, *path) for entry in entries]


def _rates(results: dict[str, Any]) -> list[str]:
    return [str(int(r)) for r in results["config"]["rates"]]


def highest_rate_held(rep: dict[str, Any], bar_ms: float) -> float | None:
    """The highest swept rate with p99 under the bar, no errors and the rate achieved (95 %);
    rates above a failing one do not count."""
    best = None
    for rate, phase in sorted(rep.get("sweep", {}).items(), key=lambda kv: float(kv[0])):
        held = (
            phase["p99_ms"] < bar_ms
            and phase["errors"] == 0
            and phase["achieved_rate"] >= 0.95 * float(rate)
        )
        if not held:
            break
        best = float(rate)
    return best


# -- the profile ---------------------------------------------------------------------------------


def _frame_package(frame: str) -> str:
    """'function (path/file.py)' -> the top-level package the file belongs to."""
    path = frame[frame.rfind("(") + 1 :].rstrip(")")
    if "wrapper for " in frame:  # Cython-compiled SQLAlchemy methods
        return frame.split("wrapper for ", 1)[1].split(".", 1)[0]
    if "/platica/" in path or path.startswith("platica/"):
        return "platica"
    if "site-packages/" in path:
        name = path.split("site-packages/", 1)[1].split("/", 1)[0]
        return name.removesuffix(".py")
    if "/lib/python3" in path or path.startswith("<frozen"):
        return "stdlib"
    return path or "?"


def _short(frame: str) -> str:
    name, _, path = frame.partition(" (")
    path = path.rstrip(")")
    marker = path.rfind("site-packages/")
    if marker >= 0:
        path = path[marker + len("site-packages/") :]
    elif "/src/" in path:
        path = path[path.rfind("/src/") + 5 :]
    elif "/lib/python3" in path:
        path = path[path.find("/lib/python3") + 1 :]
        path = path.split("/", 2)[-1]
    return f"{name} ({path})"


def summarize_profile(raw: str, top: int = 15) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> sample counts: self by function, inclusive by package
    and by Plática function."""
    total = 0
    leaf: Counter[str] = Counter()
    package_inclusive: Counter[str] = Counter()
    package_self: Counter[str] = Counter()
    platica_inclusive: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        # py-spy puts the process/thread name first when asked; skip non-frames.
        frames = [f for f in frames if "(" in f]
        if not frames:
            continue
        total += count
        leaf[_short(frames[-1])] += count
        package_self[_frame_package(frames[-1])] += count
        for package in {_frame_package(f) for f in frames}:
            package_inclusive[package] += count
        for name in {_short(f) for f in frames if _frame_package(f) == "platica"}:
            platica_inclusive[name] += count
    return {
        "samples": total,
        "self_by_function": leaf.most_common(top),
        "self_by_package": package_self.most_common(top),
        "inclusive_by_package": package_inclusive.most_common(top),
        "inclusive_by_platica_function": platica_inclusive.most_common(top),
    }


# -- the chart -----------------------------------------------------------------------------------

COLOURS = {
    "postgres": "#1f77b4",
    "sqlite": "#ff7f0e",
    "postgres-split": "#9467bd",
    "bare ASGI": "#2ca02c",
}
SCENARIOS = ("postgres", "sqlite", "postgres-split")
TITLES = {
    "postgres": "PostgreSQL, one `platica serve` (web + worker): the bars apply here",
    "sqlite": "SQLite, one `platica serve` (for information)",
    "postgres-split": "PostgreSQL, `platica serve --no-worker` + one `platica worker` process "
    "(for information)",
}


def chart_svg(
    series: dict[str, list[tuple[float, tuple[float, float, float], str]]],
    bar_ms: float,
    bar_rate: float,
    width: int = 760,
    height: int = 420,
) -> str:
    """Ack latency (log scale) against arrival rate: median with min-max whiskers, per series.

    `series`: name -> [(rate, (min, median, max) in ms, "p99"/"p50")]."""
    left, right, top, bottom = 70, 170, 40, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    rates = sorted({r for points in series.values() for r, _, _ in points} | {bar_rate})
    values = [
        v
        for points in series.values()
        for _, spread3, _ in points
        for v in spread3
        if not math.isnan(v) and v > 0
    ]
    y_min = 10 ** math.floor(math.log10(max(min(values, default=1.0), 0.1)))
    y_max = 10 ** math.ceil(math.log10(max(max(values, default=100.0), bar_ms * 2)))
    # The sweep's rates, evenly spaced (a categorical axis: 25 and 50 stay readable next to 600).
    slot = plot_w / len(rates)

    def x(rate: float) -> float:
        return left + slot * (rates.index(rate) + 0.5)

    def y(ms: float) -> float:
        ms = min(max(ms, y_min), y_max)
        return top + plot_h * (
            1 - (math.log10(ms) - math.log10(y_min)) / (math.log10(y_max) - math.log10(y_min))
        )

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14" font-weight="bold">Webhook acknowledgement '
        "latency, open loop (median of repetitions, whiskers min–max)</text>",
    ]
    decade = y_min
    while decade <= y_max * 1.0001:
        for sub in (1, 2, 5):
            value = decade * sub
            if value > y_max * 1.0001:
                break
            yy = y(value)
            stroke = "#ccc" if sub == 1 else "#eee"
            out.append(
                f'<line x1="{left}" y1="{yy:.1f}" x2="{left + plot_w}" y2="{yy:.1f}" '
                f'stroke="{stroke}"/>'
            )
            label = f"{value:g}"
            out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{label}</text>')
        decade *= 10
    for rate in rates:
        xx = x(rate)
        out.append(
            f'<line x1="{xx:.1f}" y1="{top}" x2="{xx:.1f}" y2="{top + plot_h}" stroke="#eee"/>'
        )
        out.append(
            f'<text x="{xx:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{rate:g}</text>'
        )
    out.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>'
    )
    out.append(
        f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">'
        "arrival rate (webhooks per second)</text>"
    )
    out.append(
        f'<text x="18" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {top + plot_h / 2})">latency (ms, log scale)</text>'
    )
    yy = y(bar_ms)
    out.append(
        f'<line x1="{left}" y1="{yy:.1f}" x2="{left + plot_w}" y2="{yy:.1f}" '
        'stroke="#d62728" stroke-dasharray="6 4"/>'
    )
    out.append(
        f'<line x1="{x(bar_rate):.1f}" y1="{top}" x2="{x(bar_rate):.1f}" '
        f'y2="{top + plot_h}" stroke="#d62728" stroke-dasharray="2 4"/>'
    )
    out.append(
        f'<text x="{left + plot_w - 4}" y="{yy - 4:.1f}" fill="#d62728" text-anchor="end">'
        f"SPEC §6: p99 &lt; {bar_ms:g} ms at {bar_rate:g}/s</text>"
    )
    legend_y = top + 10
    for name, points in series.items():
        base = name.split(" ")[0] if not name.startswith("bare") else "bare ASGI"
        colour = COLOURS.get(base, "#555")
        dashed = ' stroke-dasharray="5 3"' if name.endswith("p50") else ""
        ordered = sorted(points)
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{x(r):.1f},{y(s[1]):.1f}"
            for i, (r, s, _) in enumerate(ordered)
            if not math.isnan(s[1])
        )
        if path:
            out.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"{dashed}/>')
        for rate, (low, mid, high), _ in ordered:
            if math.isnan(mid):
                continue
            xx = x(rate)
            out.append(
                f'<line x1="{xx:.1f}" y1="{y(low):.1f}" x2="{xx:.1f}" y2="{y(high):.1f}" '
                f'stroke="{colour}"/>'
            )
            out.append(f'<circle cx="{xx:.1f}" cy="{y(mid):.1f}" r="3" fill="{colour}"/>')
        lx = left + plot_w + 12
        out.append(
            f'<line x1="{lx}" y1="{legend_y}" x2="{lx + 24}" y2="{legend_y}" '
            f'stroke="{colour}" stroke-width="2"{dashed}/>'
        )
        out.append(f'<text x="{lx + 30}" y="{legend_y + 4}">{escape(name)}</text>')
        legend_y += 18
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -- the markdown --------------------------------------------------------------------------------


def _sweep_spread(
    reps: Sequence[dict[str, Any]], rate: str, key: str
) -> tuple[float, float, float]:
    return spread(_values(reps, "sweep", rate, key))


# The processes that are Plática: `platica serve` and, on PostgreSQL, its worker child.
PLATICA = ("platica", "platica worker")
# The whole PostgreSQL server in the usage figures (bench.procs.POSTGRES_SERVER).
POSTGRES = "postgres server"


def _platica_sum(phase: dict[str, Any], key: str) -> float | None:
    values = [_get(phase, "usage", key, name) for name in PLATICA]
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _cpu_ms_per_message(phase: dict[str, Any] | None, process: str | None = None) -> float | None:
    """CPU ms per acknowledged webhook of `process`, or of Plática's processes together."""
    if not phase or not phase.get("ok"):
        return None
    if process is None:
        seconds = _platica_sum(phase, "cpu_seconds")
    else:
        seconds = _get(phase, "usage", "cpu_seconds", process)
    return None if seconds is None else 1000.0 * seconds / phase["ok"]


def _drain_cut(drains: Sequence[dict[str, Any] | None]) -> str:
    """Which drains ran out of time and why, "" when none did: "repetitions 1, 3: the drain
    deadline", or just why for a single drain."""
    cut = [(i, d["stopped_by"]) for i, d in enumerate(drains, 1) if d and d.get("stopped_by")]
    if not cut:
        return ""
    reasons = " / ".join(sorted({f"the {why}" for _, why in cut}))
    if len(drains) == 1:
        return reasons
    which = "repetition" + ("s" if len(cut) > 1 else "") + " " + ", ".join(str(i) for i, _ in cut)
    return f"{which}: {reasons}"


def _n(value: Any) -> str:
    """A count with thousands separators; a dash when missing."""
    return f"{value:,}" if isinstance(value, int | float) else "–"


def _mark(ok: bool | None) -> str:
    return "– not measured" if ok is None else ("✅ PASS" if ok else "❌ FAIL")


def _notes(notes: dict[str, int] | None) -> str:
    """{"rate limited": 3900} -> '3,900 “rate limited”'."""
    return ", ".join(f"{n:,} “{escape(note)}”" for note, n in (notes or {}).items())


def _once_measured(checks: Sequence[dict[str, Any] | None], *, bursts: bool = False) -> str:
    """The exactly-once bar's measured text: counts over every acknowledged message, and what
    the database says about those not answered (so a silent drop never reads as success)."""
    c = merge(check for check in checks if check)
    acknowledged = int(c.get("acknowledged", 0))
    text = (
        f"{c.get('answered_once', 0):,}/{acknowledged:,} acknowledged messages answered exactly "
        f"once; {c.get('stored', 0):,} stored (by MessageSid); **{c.get('unanswered', 0):,} "
        f"unanswered**, {c.get('answered_twice_or_more', 0):,} answered twice or more, "
        f"{c.get('fallback', 0):,} answered by the fallback message"
    )
    why = []
    if c.get("not_stored"):
        why.append(f"{c['not_stored']:,} not stored")
    if c.get("pending"):
        why.append(f"{c['pending']:,} still pending when the wait ended")
    if c.get("skipped"):
        why.append(
            f"{c['skipped']:,} marked not to be answered (`reply_state = 'skipped'`: "
            f"{_notes(c.get('skipped_notes'))})"
        )
    if c.get("failed"):
        why.append(f"{c['failed']:,} failed ({_notes(c.get('failed_notes'))})")
    if c.get("answered_without_reply"):
        why.append(f"{c['answered_without_reply']:,} marked answered with no reply stored")
    if c.get("reply_not_sent"):
        why.append(f"{c['reply_not_sent']:,} whose reply never reached Twilio")
    if why:
        text += " (" + "; ".join(why) + ")"
    text += (
        f"; {c.get('replies', 0):,} replies, {c.get('sends_not_in_database', 0):,} sends to "
        "Twilio the database does not know"
    )
    if bursts and c.get("burst_senders"):
        text += (
            f"; {c['burst_senders']:,} of {c.get('senders', 0):,} senders wrote bursts "
            f"({c.get('burst_messages', 0):,} messages), answered by {c.get('burst_replies', 0):,} "
            f"replies ({c.get('bursts_answered_in_parts', 0):,} bursts by more than one)"
        )
    return text


def _ratios(reps: Sequence[dict[str, Any]]) -> list[float | None]:
    """Per repetition: the sustained replies/s with the fakes' latency over the instant drain's."""
    ratios: list[float | None] = []
    for rep in reps:
        sustained = _get(rep, "bar", "sustained_rate")
        instant = _get(rep, "drain", "replies_per_second")
        ratios.append(sustained / instant if sustained and instant else None)
    return ratios


def _ceiling(config: dict[str, Any], meta: dict[str, Any]) -> tuple[int | None, float]:
    """The worker concurrency of the run and the replies/s it allows with the fakes' latency."""
    concurrency = config.get("worker_concurrency") or meta.get("worker_concurrency_default")
    per_reply = config["llm_latency"] + config["twilio_latency"]
    return concurrency, (concurrency / per_reply if concurrency and per_reply else math.nan)


def _bars(results: dict[str, Any], backend: str) -> list[tuple[str, str, bool | None]]:
    config = results["config"]
    meta = results["meta"]
    reps = results["scenarios"].get(backend) or []
    if not reps:
        return []
    bars: list[tuple[str, str, bool | None]] = []
    sqlite = backend == "sqlite"
    bar_ms = config["bar_p99_ms"]

    # -- ack latency: the one-account load where there is one, else the sweep's step.
    loads = [r.get("bar") for r in reps if r.get("bar")]
    if loads and not sqlite:
        p99 = [_get(b, "ack", "p99_ms") for b in loads]
        errors = sum(int(_get(b, "ack", "errors") or 0) for b in loads)
        requests = sum(int(_get(b, "ack", "requests") or 0) for b in loads)
        worst = spread(p99)[2]
        ok = None if math.isnan(worst) else worst < bar_ms and errors == 0
        sweep_rate = str(int(config["bar_rate"]))
        sweep = _values(reps, "sweep", sweep_rate, "p99_ms")
        measured = (
            f"p99 {fmt_spread(p99)} ms over the {config['bar_seconds']:g} s one-account load "
            f"(worst repetition {fmt(worst)} ms; p50 "
            f"{fmt_spread([_get(b, 'ack', 'p50_ms') for b in loads])} ms, max "
            f"{fmt_spread([_get(b, 'ack', 'max_ms') for b in loads], 0)} ms), {errors} failed of "
            f"{requests:,}"
        )
        if any(v is not None for v in sweep):
            measured += (
                f"; the sweep's {config['step_seconds']:g} s step: p99 {fmt_spread(sweep)} ms"
            )
        bars.append((f"Webhook ack p99 < {bar_ms:g} ms at {config['bar_rate']:g}/s", measured, ok))
    else:
        rate = config.get("sqlite_bar_rate", 200.0) if sqlite else config["bar_rate"]
        key = str(int(rate))
        sweep_p99 = spread(_values(reps, "sweep", key, "p99_ms"))
        errors = sum(int(_get(r, "sweep", key, "errors") or 0) for r in reps)
        ok = None if math.isnan(sweep_p99[2]) else (sweep_p99[2] < bar_ms and errors == 0)
        measured = (
            f"p99 {fmt_spread(_values(reps, 'sweep', key, 'p99_ms'))} ms over a "
            f"{config['step_seconds']:g} s sweep step (worst repetition {fmt(sweep_p99[2])} ms), "
            f"{errors} failed requests"
        )
        not_reached = [r for r in reps if _get(r, "sweep", key, "p99_ms") is None]
        if not_reached:
            ok = False
            stops = []
            for r in not_reached:
                done = sorted(r.get("sweep", {}).items(), key=lambda kv: float(kv[0]))
                done = [(k, v) for k, v in done if "p99_ms" in v]
                if done:
                    last, phase = done[-1]
                    stops.append(f"{last}/s (p99 {fmt(phase['p99_ms'], 0)} ms)")
            measured = (
                f"not reached in {len(not_reached)} of {len(reps)} repetitions: the sweep "
                f"stopped at {', '.join(stops) or '?'}"
                + (f"; where reached, {measured}" if not math.isnan(sweep_p99[1]) else "")
            )
        bars.append((f"Webhook ack p99 < {bar_ms:g} ms at {rate:g}/s", measured, ok))

    # -- the reply's own overhead
    overhead = spread(_values(reps, "steady", "overhead_ms", "p50"))
    debounce = sorted({r.get("debounce_seconds") for r in reps if r.get("debounce_seconds")})
    bars.append(
        (
            f"Reply overhead < {config['bar_overhead_ms']:g} ms median",
            f"{fmt_spread(_values(reps, 'steady', 'overhead_ms', 'p50'))} ms (median per "
            f"repetition) = reply − ack − {config['llm_latency']:g} s LLM − "
            f"{config['twilio_latency']:g} s Twilio − the account's "
            f"{'/'.join(f'{d:g}' for d in debounce) or '?'} s debounce",
            None if math.isnan(overhead[1]) else overhead[2] < config["bar_overhead_ms"],
        )
    )

    # -- a voice note's own overhead (issue 14)
    voice_bar = _voice_bar(config, reps)
    if voice_bar is not None:
        bars.append(voice_bar)

    # -- one account at 300/s for 15 s, default settings
    if loads and not sqlite:
        load_checks = [b.get("checks") for b in loads]
        ok = all(bool(c and c.get("exactly_once")) for c in load_checks)
        measured = _once_measured(load_checks, bursts=True)
        finished = [b for b in loads if b.get("finish_instant")]
        if finished:
            measured += (
                f". In {len(finished)} of {len(loads)} repetitions the backlog was not done "
                f"{config['sustain_seconds']:g} s after the load: the rest was finished with the "
                "fakes at latency 0"
            )
        bars.append(
            (
                f"One account at {config['bar_rate']:g} webhooks/s for {config['bar_seconds']:g} "
                "s, default settings: every message answered exactly once (limits pace, they "
                "never silently drop)",
                f"{len(loads)} repetition{'s' if len(loads) != 1 else ''}, together: {measured}",
                ok,
            )
        )

        # -- sustained vs. instant replies per second
        ratios = _ratios(reps)
        sustained = _values(loads, "sustained_rate")
        instant = _values(reps, "drain", "replies_per_second")
        concurrency, ceiling = _ceiling(config, meta)
        # A ratio that could not be measured (too few replies on one side) is not shown to
        # hold: with messages dropped instead of answered there may be nothing to drain.
        ok = all(r is not None and r >= config["bar_sustained_ratio"] for r in ratios)
        during = _values(loads, "during_load_rate")
        measured = (
            f"(a) {fmt_spread(sustained)} replies/s with the {config['llm_latency']:g} s LLM and "
            f"{config['twilio_latency']:g} s Twilio (the one-account load's backlog once the load "
            f"has ended, steady middle) vs. (b) {fmt_spread(instant)} replies/s with both at 0 "
            f"(the drain): (a)/(b) = {fmt_spread(ratios, 2)}. Both answer a backlog with no "
            "webhooks arriving; while the 300/s load arrives, the worker (at a lower CPU "
            f"priority) yields to the acknowledgements and sends {fmt_spread(during)} replies/s"
        )
        if concurrency:
            measured += (
                f"; a worker answering {concurrency} conversations at once sends at most "
                f"{concurrency} / {config['llm_latency'] + config['twilio_latency']:g} s = "
                f"{fmt(ceiling)} replies/s with this LLM"
            )
        thin = [
            f"repetition {i}: {_get(r, 'drain', 'replies') or 0} drain replies"
            for i, r in enumerate(reps, 1)
            if _get(r, "drain", "replies_per_second") is None
        ]
        if thin:
            measured += (
                f". **Not shown to hold**: (b) not measured in {'; '.join(thin)} (fewer than 50 "
                "replies left to drain: nothing to measure a rate on)"
            )
        bars.append(
            (
                f"Sustained replies/s with a {config['llm_latency']:g} s LLM ≥ "
                f"{config['bar_sustained_ratio']:g} × the instant-LLM drain rate",
                measured,
                ok,
            )
        )

    # -- every message of the run
    all_checks = [r.get("checks") for r in reps]
    measured = _once_measured(all_checks, bursts=bool(loads))
    cut = _drain_cut([r.get("drain") for r in reps])
    if cut:
        measured += f". **The drain ran out of time** ({cut})"
    bars.append(
        (
            "Every message answered exactly once (every phase of every repetition)",
            measured,
            all(bool(c and c.get("exactly_once")) for c in all_checks),
        )
    )
    return bars


def _broadcast_bars(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """Issue 15's bars, from the broadcast phase (none if it did not run)."""
    b = results.get("broadcast")
    if not b:
        return []
    ratio = b.get("peak_ratio")
    progress = b.get("progress") or {}
    return [
        (
            "Each recipient exactly one message, across a SIGKILL of the worker",
            f"{b['recipients']:,} recipients, {b['opted_out']} of them opted out beforehand; "
            f"{b['messages']:,} messages at Twilio: {b['duplicates']} duplicates, "
            f"{b['missing']} missing, {b['to_opted_out']} to the opted-out, {b['unexpected']} "
            f"to anyone else. The worker was killed (SIGKILL) with {b['killed_after_sent']:,} "
            f"sent and started again ({fmt(b.get('restart_seconds'))} s to ready; "
            f"{b.get('recoveries', 0)} interrupted sends found at Twilio instead of sent again)",
            b["duplicates"] == 0
            and b["missing"] == 0
            and b["to_opted_out"] == 0
            and b["unexpected"] == 0,
        ),
        (
            f"Never over {100 * BROADCAST_PACE_BAR:.0f} % of the pace over "
            f"any {b['window_seconds']:g} s",
            f"busiest {b['window_seconds']:g} s: {b['busiest_window']} messages = "
            f"{fmt(b['peak_rate'])}/s = {fmt(None if ratio is None else 100 * ratio, 0)} % of "
            f"{b['mps']:g}/s (the kill and restart included). All sent in "
            f"{fmt(b.get('total_seconds'))} s, {fmt(b.get('ideal_seconds'))} s at the pace",
            bool(b.get("within_pace")),
        ),
        (
            "The progress figures are Twilio's",
            f"GET .../broadcasts/{{id}}: {progress.get('status')}, total {progress.get('total')}, "
            f"sent {progress.get('sent')} + delivered {progress.get('delivered')} + read "
            f"{progress.get('read')} (Twilio accepted {b['messages']}), skipped "
            f"{progress.get('skipped')}, queued {progress.get('queued')}, failed "
            f"{progress.get('failed')}",
            bool(b.get("progress_matches")),
        ),
    ]


def _voice_waits(config: dict[str, Any], debounce: str) -> str:
    """What the voice-note overhead subtracts, in words; `debounce` says how long the WhatsApp
    number's debounce is ("2 s")."""
    return (
        f"reply − ack − {config['twilio_latency']:g} s Twilio's media URL − "
        f"{config['media_latency']:g} s its storage host − {config['llm_latency']:g} s "
        f"transcription − {config['llm_latency']:g} s LLM − {config['twilio_latency']:g} s "
        f"Twilio − the WhatsApp number's {debounce} debounce"
    )


def _voice_bar(
    config: dict[str, Any], reps: Sequence[dict[str, Any]]
) -> tuple[str, str, bool | None] | None:
    """Issue 14's bar: Plática's own overhead for a voice note, median per repetition, under
    `bar_voice_overhead_ms` in every one; every note answered, and transcribed. With the acks of
    the voice notes beside the text messages' (e2e steady, same rate)."""
    voices = [r["voice"] for r in reps if r.get("voice")]
    if not voices:
        return None
    bar_ms = config["bar_voice_overhead_ms"]
    p50 = _values(voices, "overhead_ms", "p50")
    worst = spread(p50)[2]
    messages = sum(int(v.get("messages") or 0) for v in voices)
    answered = sum(int(v.get("replies") or 0) for v in voices)
    understood = sum(int(_get(v, "media_states", "understood") or 0) for v in voices)
    debounce = sorted({v["debounce_seconds"] for v in voices if v.get("debounce_seconds")})
    measured = (
        f"{fmt_spread(p50)} ms (median per repetition; p90 "
        f"{fmt_spread(_values(voices, 'overhead_ms', 'p90'))} ms) = "
        + _voice_waits(config, ("/".join(f"{d:g}" for d in debounce) or "?") + " s")
        + f"; {answered}/{messages} voice notes answered, {understood} transcribed. Webhook ack "
        f"for a voice note: p99 {fmt_spread(_values(voices, 'ack', 'p99_ms'))} ms (p50 "
        f"{fmt_spread(_values(voices, 'ack', 'p50_ms'))} ms), for a text message at the same "
        f"{config['e2e_rate']:g}/s (e2e steady): p99 "
        f"{fmt_spread(_values(reps, 'steady', 'ack', 'p99_ms'))} ms (p50 "
        f"{fmt_spread(_values(reps, 'steady', 'ack', 'p50_ms'))} ms)"
    )
    ok = None if math.isnan(worst) else worst < bar_ms and answered == understood == messages
    return (f"Voice-note overhead < {bar_ms:g} ms median (issue 14)", measured, ok)


def _usage_row(label: str, phases: Sequence[dict[str, Any] | None]) -> str:
    phases = [p for p in phases if p]
    cpu = [_get(p, "usage", "cpu_percent", "platica") for p in phases]
    worker_cpu = [_get(p, "usage", "cpu_percent", "platica worker") for p in phases]
    rss = [_platica_sum(p, "rss_peak_mib") if p else None for p in phases]
    per_message = [_cpu_ms_per_message(p) for p in phases]
    pg = [_get(p, "usage", "cpu_percent", POSTGRES) for p in phases]
    pg_per_message = [_cpu_ms_per_message(p, POSTGRES) for p in phases]
    sessions = [_get(p, "usage", "postgres_sessions") for p in phases]
    generator = [_get(p, "usage", "cpu_percent", "load generator") for p in phases]
    fakes = [
        (_get(p, "usage", "cpu_percent", "fake-openai") or 0)
        + (_get(p, "usage", "cpu_percent", "fake-twilio") or 0)
        for p in phases
    ]
    machine = [_get(p, "usage", "machine_busy_percent") for p in phases]
    return (
        f"| {label} | {fmt_spread(cpu, 0)} | {fmt_spread(worker_cpu, 0)} | {fmt_spread(rss, 0)} "
        f"| {fmt_spread(per_message, 2)} "
        f"| {fmt_spread(pg, 0)} | {fmt_spread(pg_per_message, 2)} | {fmt_spread(sessions, 0)} "
        f"| {fmt_spread(generator, 0)} | {fmt_spread(fakes, 0)} | {fmt_spread(machine, 0)} |"
    )


def _worker_where(reps: Sequence[dict[str, Any]]) -> str:
    """Where the worker ran, as measured: the processes the bench found and watched."""
    watched: set[str] = set()
    for rep in reps:
        watched |= set(_get(rep, "steady", "usage", "cpu_percent") or {})
    if any(name.endswith("-worker") for name in watched):  # run.py's `platica worker` child
        return "a separate `platica worker` process"
    if "platica worker" in watched:
        return "a child process of `platica serve`"
    return "inside the `platica serve` process"


def _concurrency(config: dict[str, Any], meta: dict[str, Any]) -> str:
    """The worker concurrency the run used, as the setup section says it."""
    if config.get("worker_concurrency"):
        return f"{config['worker_concurrency']} (`WORKER_CONCURRENCY`, from --worker-concurrency)"
    default = meta.get("worker_concurrency_default")
    return "Plática's default (`WORKER_CONCURRENCY` unset" + (f": {default})" if default else ")")


# What `platica serve` may be given in the main scenarios: where its database and the fakes are,
# its own URL, the account's numbers, the fakes' credentials, the log level. Anything else
# changes a default.
RUN_SETTINGS = frozenset(
    {
        "DATABASE_URL",
        "PUBLIC_BASE_URL",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_PHONE_NUMBER",
        "TWILIO_WHATSAPP_NUMBER",
        "TWILIO_API_BASE_URL",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "LOG_LEVEL",
    }
)


def non_default_settings(results: dict[str, Any]) -> dict[str, str]:
    """The variables `platica serve` got that change one of its defaults."""
    env = results.get("serve_env") or {}
    return {name: value for name, value in env.items() if name not in RUN_SETTINGS}


def _settings_lines(results: dict[str, Any]) -> list[str]:
    """The setup's lines on settings: what `platica serve` got, the account as it was."""
    meta = results["meta"]
    env = results.get("serve_env") or {}
    lines = [
        "- **One account, default settings.** `platica serve` got only "
        + ", ".join(f"`{name}`" for name in env if name in RUN_SETTINGS)
        + " (where its database and the fakes are, its own URL, the account's SMS and WhatsApp "
        "numbers, the fakes' credentials, the log level); every other setting is Plática's "
        "default"
        + (
            " (" + ", ".join(f"`{k}={v}`" for k, v in (meta.get("defaults") or {}).items()) + ")"
            if meta.get("defaults")
            else ""
        )
        + ". The account is the default one `platica serve` creates for TWILIO_PHONE_NUMBER and "
        "TWILIO_WHATSAPP_NUMBER, left as created: nothing in the database is changed."
    ]
    changed = non_default_settings(results)
    if changed:
        lines.append(
            "- ⚠️ **Not the default settings in this run:** "
            + ", ".join(f"`{k}={v}`" for k, v in changed.items())
            + ". The bars above are not the defaults' verdict."
        )
    account = meta.get("account") or {}
    channels = account.get("sms_channels") or []
    if channels:
        channel = channels[0]
        default = meta.get("debounce_default")
        lines.append(
            f"- The account as read from the database: {account.get('accounts')} account, SMS "
            f"number {channel['phone_number']}, debounce {channel['debounce_seconds']:g} s"
            + (f" (the model's default: {default:g} s)" if default is not None else "")
            + f", AI {'on' if channel.get('ai_enabled') else 'off'}, daily token budget "
            f"{channel.get('daily_token_budget') or 'none'}"
            + "".join(
                f"; WhatsApp number {w['phone_number']} (the voice notes'), debounce "
                f"{w['debounce_seconds']:g} s"
                for w in account.get("whatsapp_channels") or []
            )
            + "."
        )
    return lines


def write(results: dict[str, Any], output: Path) -> None:
    config = results["config"]
    meta = results["meta"]
    scenarios = results["scenarios"]
    reps_n = config["repetitions"]
    rates = _rates(results)
    chart_path = output.with_suffix(".svg")
    lines: list[str] = []
    add = lines.append

    add("# Benchmark: the quality bars of SPEC §6")
    add("")
    add(
        f"Generated by `make bench` (`python -m bench.run`) on {meta.get('date', '?')}, "
        f"commit `{meta.get('commit', '?')}`"
        + (" with uncommitted changes under src/" if meta.get("src_dirty") else "")
        + f", in {fmt(meta.get('total_seconds'), 0)} s. Do not edit by hand: run `make bench`."
    )
    add("")
    add(
        "> **Noise.** These numbers come from a shared 2-core machine where other engineers' test "
        "suites may be running at the same time (load average at start: "
        f"{' '.join(meta.get('load_average_at_start', ['?']))}; the *machine busy* column below "
        "shows how much of the CPU everything together used during each phase). Treat them as "
        "indicative: the harness is what matters. Run `make bench` on a quiet machine to get "
        "figures to compare, and compare ratios (Plática vs. the bare ASGI app and vs. "
        "INSERT+COMMIT, measured in the same run) rather than absolute numbers."
    )
    add("")
    add(
        f"Every figure is **median (min–max) over {reps_n} repetition{'s' if reps_n != 1 else ''}**"
        + (
            f" ({config['sqlite_repetitions']} for SQLite)"
            if config.get("sqlite_repetitions", reps_n) != reps_n
            else ""
        )
        + " unless it says otherwise; “–” means not measured (a sweep stops at the first rate "
        f"whose p99 exceeds {fmt(config.get('abort_p99_ms', 1000.0), 0)} ms or that fails over 1 % of its "
        "requests: higher rates would only pile up work)."
    )
    add("")

    # -- the bars
    add("## SPEC §6 bars")
    add("")
    for backend in SCENARIOS:
        bars = _bars(results, backend)
        if not bars:
            continue
        add(f"**{TITLES[backend]}**")
        add("")
        add("| bar | measured | verdict |")
        add("|---|---|---|")
        for name, measured, ok in bars:
            add(f"| {name} | {measured} | {_mark(ok)} |")
        add("")
    broadcast = _broadcast_bars(results)
    if broadcast:
        add("**A broadcast (issue 15), PostgreSQL, its worker killed half-way**")
        add("")
        add("| bar | measured | verdict |")
        add("|---|---|---|")
        for name, measured, ok in broadcast:
            add(f"| {name} | {measured} | {_mark(ok)} |")
        add("")

    # -- setup
    add("## Machine and setup")
    add("")
    add(
        f"- CPU: {meta.get('cpu_model', '?')}, {meta.get('cpus', '?')} cores; "
        f"memory {meta.get('memory_gib', '?')} GiB; Python {meta.get('python', '?')}."
    )
    if meta.get("postgres"):
        settings = meta.get("postgres_settings", {})
        add(
            f"- PostgreSQL {meta['postgres']} on loopback ("
            + ", ".join(f"{k}={v}" for k, v in settings.items())
            + "). Each scenario gets a throwaway database copied from one migrated by "
            f"`python -m platica db upgrade` ({fmt(meta.get('migrate_seconds'))} s), "
            "dropped at the end."
        )
    add(
        "- SQLite: a fresh file in a temporary directory per repetition (migrated by "
        "`platica serve` at start-up)."
    )
    add(
        f"- Fakes as separate processes: `python -m tests.fakes openai --latency "
        f"{config['llm_latency']:g}` (completions and transcriptions) and `python -m tests.fakes "
        f"twilio --latency {config['twilio_latency']:g} --media-latency "
        f"{config['media_latency']:g}` (sends and media URLs; the media storage host a media "
        "URL's 307 leads to, in the same process; no status callbacks)."
    )
    add(
        "- Plática: one `python -m platica serve` (web + worker), console logs to a file, "
        "signatures checked (TWILIO_AUTH_TOKEN set); worker concurrency: "
        f"{_concurrency(config, meta)}."
    )
    for line in _settings_lines(results):
        add(line)
    if meta.get("postgres"):
        add(
            "- PostgreSQL CPU is the **whole server's**: the postmaster, its background processes "
            "(WAL writer, checkpointer, autovacuum…) and every backend, those that exited during "
            "the phase included (their time moves to the postmaster's cutime/cstime in "
            "/proc/PID/stat). Any other database's load on the same server is therefore "
            "included too: read it with the *machine busy* column. Sessions are the connections "
            "opened on the scenario's database (`pg_stat_database.sessions`) during the phase."
            + (
                ""
                if meta.get("postgres_server_cpu", True)
                else " **Not measured in this run**: the server's processes were not visible."
            )
        )
    add(
        f"- Load generator: an asyncio open-loop driver in the bench process (uvloop), client "
        f"`{config['client']}`: every webhook signed before the clock starts; HTTP/1.1 "
        "keep-alive connections; latency counted from each request's *due* time (no "
        "coordinated omission); its garbage collector paused while it sends. Sweep steps of "
        f"{config['step_seconds']:g} s at {', '.join(rates)} webhooks/s; closed loop at "
        f"{config['closed_concurrency']} concurrent requests for {config['closed_seconds']:g} s. "
        "Every webhook goes to the one account's number; no sender writes in two phases."
    )
    sizes = config.get("burst_sizes") or [3, 5]
    add(
        f"- **The one-account load** (PostgreSQL, every repetition, on a fresh `platica serve`): "
        f"{config['bar_rate']:g} webhooks/s for {config['bar_seconds']:g} s, open loop; "
        f"{100 * config['burst_share']:g} % of its senders write {sizes[0]}–{sizes[1]} short "
        f"messages {config['burst_gap']:g} s apart (the account's debounce answers them with one "
        "reply), the others one. Its acks make the ack bar. Then, with the fakes still at their "
        "latency, the database is polled until every message is settled (answered and its "
        "reply sent, or marked not to be answered), for at most "
        f"{config['sustain_seconds']:g} s after the load: the replies sent meanwhile give the "
        "*sustained* rate; anything left then is finished with the fakes at 0. Then its own "
        "exactly-once check."
    )
    add(
        f"- End to end: *steady* = {config['e2e_rate']:g} messages/s for {config['e2e_seconds']:g} s, "
        "one per sender, each waited for. Reply overhead = (time the fake Twilio received the "
        f"reply − time the webhook was acknowledged) − {config['llm_latency']:g} s − "
        f"{config['twilio_latency']:g} s − the account's debounce as stored in its channel "
        "settings (both clocks are the machine's CLOCK_MONOTONIC)."
    )
    if config.get("voice_seconds"):
        add(
            f"- **Voice notes** (issue 14), after the e2e steady phase of every repetition: "
            f"{config['voice_rate']:g} WhatsApp voice notes/s for {config['voice_seconds']:g} s, "
            f"one per sender, each a {config['voice_note_seconds']:g} s Ogg Opus note (silent "
            "frames: a few hundred bytes) registered with the fake Twilio first; each is fetched "
            "(Twilio's media URL with the account's credentials, its 307, the storage host), "
            "kept, transcribed, then answered; each waited for. Voice-note overhead = "
            + _voice_waits(config, "(as stored in its channel settings)")
            + ". Its acks are compared with the e2e steady phase's, text at the same rate."
        )
    if results.get("broadcast"):
        add(
            f"- **A broadcast** (issue 15), once, on its own database: `serve --no-worker` and a "
            f"`platica worker`; one approved template (WhatsApp) to "
            f"{config.get('broadcast_recipients', 0):,} recipients at the channel's broadcast_mps "
            f"= {config.get('broadcast_mps', 0):g}/s, {config.get('broadcast_opted_out', 0)} of "
            "them stored as opted out (STOP) beforehand. Once "
            f"{100 * config.get('broadcast_kill_share', 0.5):g} % was sent at the fake Twilio the "
            "worker is killed (SIGKILL) and a new one started at once; the killed worker's "
            "conversations wait out its lease and the sweeper's grace. Then every message the "
            "fake accepted is counted per recipient, the busiest 5 s window of its receive times "
            "is compared with the pace, and `GET /api/whatsapp/broadcasts/{id}` with the fake's "
            "record (no status callbacks: accepted messages stay `sent`)."
        )
    add(
        f"- Warm-up: each repetition starts with {config.get('warm_up_rate', 0):g} messages/s for "
        f"{config.get('warm_up_seconds', 0):g} s, then {config['bar_rate']:g}/s for "
        f"{config.get('warm_up_peak_seconds', 0):g} s, each answered, before anything is measured "
        "(a service in use has its connections open and its statements prepared: the message "
        "path's pool opens its connections at start-up, the other pool as concurrent load "
        "needs them); those "
        "messages are checked like the others."
    )
    add(
        "- Drain: each repetition (and the scale scenario) ends with the fakes at latency 0 "
        "while the database is polled until every message is settled, for at most "
        f"{fmt(config.get('drain_seconds'), 0)} s and never past the run's time budget of "
        f"{fmt(config.get('budget_seconds'), 0)} s; the exactly-once check is made then. Its "
        "replies per second are the *instant-LLM* rate: what the CPU allows."
    )
    add(
        "- Exactly once, checked in the database and at the fake Twilio: each acknowledged "
        "MessageSid stored once, with `reply_state = 'answered'`, covered by exactly one reply "
        "(replies point with `reply_to_id` at the last message of the batch they answer, their "
        "parts share it: in a conversation, a message is covered by the first reply anchored at "
        "or after it), every part of which reached the fake Twilio, written by the LLM (the "
        "fallback message does not count), and its sender got no message the database does not "
        "know (a second send). Messages marked `skipped` or `failed` are counted with their "
        "`note`."
    )
    add(
        f"- Trimmed to stay under 10 minutes with the one-account load: {reps_n} "
        f"repetition{'s' if reps_n != 1 else ''} (3 before), "
        f"{config.get('sqlite_repetitions', reps_n)} for SQLite (2 before), the scale "
        f"scenario at {', '.join(f'{f}x' for f in config.get('scale_factors') or []) or 'none'} "
        "(10x and 100x before), no separate *burst* phase (the sustained rate replaces it)."
    )
    add("")

    # -- ack latency
    add("## Webhook acknowledgement latency (open loop)")
    add("")
    add(f"![ack latency against arrival rate]({chart_path.name})")
    add("")
    header = "| rate/s |"
    rule = "|---|"
    present = [b for b in SCENARIOS if scenarios.get(b)]
    for backend in present:
        header += (
            f" {backend} p50 ms | {backend} p99 ms | {backend} achieved/s | {backend} failed |"
        )
        rule += "---|---|---|---|"
    baseline = results.get("baseline") or []
    if baseline:
        header += " bare ASGI p50 ms | bare ASGI p99 ms |"
        rule += "---|---|"
    add(header)
    add(rule)
    for rate in rates:
        row = f"| {rate} |"
        for backend in present:
            reps = scenarios[backend]
            row += (
                f" {fmt_spread(_values(reps, 'sweep', rate, 'p50_ms'))} |"
                f" {fmt_spread(_values(reps, 'sweep', rate, 'p99_ms'))} |"
                f" {fmt_spread(_values(reps, 'sweep', rate, 'achieved_rate'), 0)} |"
                f" {fmt_spread(_values(reps, 'sweep', rate, 'errors'), 0)} |"
            )
        if baseline:
            row += (
                f" {fmt_spread(_values(baseline, 'open', rate, 'p50_ms'))} |"
                f" {fmt_spread(_values(baseline, 'open', rate, 'p99_ms'))} |"
            )
        add(row)
    add("")
    for backend in present:
        held = [highest_rate_held(r, config["bar_p99_ms"]) for r in scenarios[backend]]
        shown = ", ".join("none" if h is None else f"{h:g}/s" for h in held)
        add(
            f"- **{backend}: highest arrival rate held with p99 < {config['bar_p99_ms']:g} ms** "
            f"(no failures, ≥ 95 % of the rate achieved): {fmt_spread(held, 0)}/s "
            f"(per repetition: {shown}; rates swept: {', '.join(rates)})."
        )
    lag = [
        phase.get("generator_lag_p99_ms")
        for backend in present
        for r in scenarios[backend]
        for phase in r.get("sweep", {}).values()
    ]
    if any(v is not None for v in lag):
        add(
            "- The generator's own lateness over every sweep step (p99 of send time − due "
            f"time): {fmt_spread(lag)} ms; it is part of the latencies above, and the bare ASGI "
            "app's column shows the floor that the generator, the kernel and uvicorn set together."
        )
    add(
        "- The worker runs while the webhooks are answered ("
        + "; ".join(f"{backend}: {_worker_where(scenarios[backend])}" for backend in present)
        + "): during the sweep it works through the backlog the sweep builds up (more messages "
        "per second than it can answer)."
    )
    add("")

    # -- physical limits
    add("## Physical limits and ratios")
    add("")
    add("| what | per second | Plática (PostgreSQL) closed-loop acks as a fraction |")
    add("|---|---|---|")
    pg_closed = _values(scenarios.get("postgres") or [], "closed", "achieved_rate")
    pg_closed_median = median([v for v in pg_closed if v is not None])
    sqlite_closed = _values(scenarios.get("sqlite") or [], "closed", "achieved_rate")
    bare_closed = _values(baseline, "closed", "achieved_rate")
    bare_median = median([v for v in bare_closed if v is not None])
    add(
        f"| bare ASGI app, closed loop ({config['closed_concurrency']} concurrent) "
        f"| {fmt_spread(bare_closed, 0)} | {fmt(pg_closed_median / bare_median if bare_median else math.nan, 3)} |"
    )
    for connections in [str(c) for c in config["probe_connections"]]:
        values = [entry.get(connections) for entry in results.get("insert_probe") or []]
        mid = median([v for v in values if v is not None])
        add(
            f"| durable single-row INSERT+COMMIT, {connections} connection(s) "
            f"| {fmt_spread(values, 0)} | {fmt(pg_closed_median / mid if mid else math.nan, 3)} |"
        )
    add(
        f"| **Plática on PostgreSQL**, closed loop ({config['closed_concurrency']} concurrent) "
        f"| {fmt_spread(pg_closed, 0)} | 1 |"
    )
    if sqlite_closed:
        add(f"| Plática on SQLite, closed loop | {fmt_spread(sqlite_closed, 0)} | – |")
    split_closed = _values(scenarios.get("postgres-split") or [], "closed", "achieved_rate")
    if split_closed:
        add(
            "| Plática on PostgreSQL, `serve --no-worker` + `platica worker`, closed loop "
            f"| {fmt_spread(split_closed, 0)} | – |"
        )
    add("")
    pg_closed_phases = [r.get("closed") for r in scenarios.get("postgres") or []]
    pg_ms = [_cpu_ms_per_message(p, POSTGRES) for p in pg_closed_phases]
    if any(v is not None for v in pg_ms):
        sessions = [_get(p, "usage", "postgres_sessions") for p in pg_closed_phases]
        add(
            "In the PostgreSQL closed loop, each acknowledged webhook cost "
            f"{fmt_spread(pg_ms, 2)} ms of the whole PostgreSQL server's CPU and "
            f"{fmt_spread([_cpu_ms_per_message(p) for p in pg_closed_phases], 2)} ms of "
            f"Plática's; {fmt_spread(sessions, 0)} sessions were opened on the database during it."
        )
        add("")

    # -- the one-account load
    pg_reps = scenarios.get("postgres") or []
    loads = [(i, r["bar"]) for i, r in enumerate(pg_reps, 1) if r.get("bar")]
    if loads:
        add(
            f"## One account at {config['bar_rate']:g} webhooks/s for {config['bar_seconds']:g} s "
            "(PostgreSQL, default settings)"
        )
        add("")
        add(
            "What became of each acknowledged message, per repetition, as the database and the "
            "fake Twilio say (see *Machine and setup* for how a message counts as answered "
            "once). *Not to be answered*: stored with `reply_state = 'skipped'`, by its note."
        )
        add("")
        add(
            "| repetition | ack p50 ms | ack p99 ms | ack max ms | failed | acknowledged | stored "
            "| answered once | unanswered | of which still pending | not to be answered "
            "| failed replies | answered twice+ | fallback | replies | burst senders (messages) "
            "| bursts answered in parts | left at the end of the load | waited s |"
        )
        add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for index, load in loads:
            c = load.get("checks") or {}
            ack = load.get("ack") or {}
            waited = fmt(load.get("wait_seconds"))
            if load.get("finish_instant"):
                waited += (
                    f" (not done after {config['sustain_seconds']:g} s: "
                    f"{load['finish_instant']['left']:,} finished with the fakes at 0)"
                )
            add(
                f"| {index} | {fmt(ack.get('p50_ms'))} | {fmt(ack.get('p99_ms'))} "
                f"| {fmt(ack.get('max_ms'), 0)} | {ack.get('errors', '–')} "
                f"| {_n(c.get('acknowledged'))} | {_n(c.get('stored'))} "
                f"| {_n(c.get('answered_once'))} | {_n(c.get('unanswered'))} "
                f"| {_n(c.get('pending'))} "
                f"| {_n(c.get('skipped'))}{' (' + _notes(c.get('skipped_notes')) + ')' if c.get('skipped') else ''} "
                f"| {_n(c.get('failed'))} | {_n(c.get('answered_twice_or_more'))} "
                f"| {_n(c.get('fallback'))} | {_n(c.get('replies'))} "
                f"| {_n(c.get('burst_senders'))} ({_n(c.get('burst_messages'))}) "
                f"| {_n(c.get('bursts_answered_in_parts'))} "
                f"| {load.get('unsettled_at_load_end', '–')} | {waited} |"
            )
        add("")

        # -- sustained vs. instant
        concurrency, ceiling = _ceiling(config, meta)
        add("## Replies per second: with the 1 s LLM (sustained) and with an instant LLM")
        add("")
        add(
            f"(a) *Sustained*: the one-account load's backlog, as it stands when the load ends, "
            f"answered while the fakes answer in {config['llm_latency']:g} s and "
            f"{config['twilio_latency']:g} s: the replies sent after the load, over their **steady "
            "middle**: those sent between the 10th and the 90th percentile of their send "
            "times, over the time between those two (the tail, where fewer conversations than "
            "the worker takes at once are left, is left out). Like (b), a backlog with no "
            "webhooks arriving meanwhile; the rate while the load arrives, when the worker (at "
            "a lower CPU priority) leaves the CPU to the acknowledgements, is shown beside it. "
            "(b) *Instant*: the drain at the end "
            "of the same repetition (the sweep's and the closed loop's backlog, same process, "
            "same account), the fakes at 0, over its steady middle the same way. A rate needs "
            "50 replies at least. The bar: (a) ≥ "
            f"{config['bar_sustained_ratio']:g} × (b) in every repetition."
        )
        add("")
        add(
            "| repetition | (a) replies/s after the load, steady middle | whole load, first to "
            "last | during the load | after the load, to the last | replies with the latency "
            "| (b) replies/s, steady middle "
            "| (b) start to last | replies in (b) (backlog) | (a)/(b) |"
        )
        add("|---|---|---|---|---|---|---|---|---|---|")
        ratios = _ratios(pg_reps)
        for index, rep in enumerate(pg_reps, 1):
            load = rep.get("bar") or {}
            drain = rep.get("drain") or {}
            add(
                f"| {index} | {fmt(load.get('sustained_rate'))} "
                f"| {fmt(load.get('first_to_last_rate'))} | {fmt(load.get('during_load_rate'))} "
                f"| {fmt(load.get('after_load_rate'))} | {load.get('replies_with_latency', '–')} "
                f"| {fmt(drain.get('replies_per_second'))} | {fmt(drain.get('start_to_last_rate'))} "
                f"| {drain.get('replies', '–')} ({drain.get('backlog', '–')}) "
                f"| {fmt(ratios[index - 1], 2)} |"
            )
        add("")
        if concurrency:
            add(
                f"With a {config['llm_latency']:g} s LLM and a {config['twilio_latency']:g} s "
                f"Twilio, a worker that answers N conversations at once sends at most N / "
                f"{config['llm_latency'] + config['twilio_latency']:g} replies per second: "
                f"**{fmt(ceiling)}/s at this run's concurrency of {concurrency}**; the instant "
                "drain is bounded by the CPU alone. Where (a) sits near that ceiling while (b) is "
                "well above it, the worker's concurrency, not the machine, is the limit."
            )
            add("")

    # -- end to end
    add("## End to end: Plática's own overhead per reply")
    add("")
    add(
        "| backend | overhead p50 ms | overhead p90 ms | overhead max ms "
        "| reply latency p50 ms (debounce included) | e2e messages answered within the phase's "
        "wait | drain replies/s (instant LLM, steady middle) |"
    )
    add("|---|---|---|---|---|---|---|")
    for backend, reps in scenarios.items():
        if not reps:
            continue
        answered = sum(int(_get(r, "steady", "replies") or 0) for r in reps)
        messages = sum(int(_get(r, "steady", "messages") or 0) for r in reps)
        add(
            f"| {backend} | {fmt_spread(_values(reps, 'steady', 'overhead_ms', 'p50'))} "
            f"| {fmt_spread(_values(reps, 'steady', 'overhead_ms', 'p90'))} "
            f"| {fmt_spread(_values(reps, 'steady', 'overhead_ms', 'max'))} "
            f"| {fmt_spread(_values(reps, 'steady', 'reply_latency_ms_p50'))} "
            f"| {answered}/{messages} "
            f"| {fmt_spread(_values(reps, 'drain', 'replies_per_second'))} |"
        )
    add("")

    # -- a voice note end to end
    if any(r.get("voice") for reps in scenarios.values() for r in reps or []):
        add("## End to end: a WhatsApp voice note (issue 14)")
        add("")
        add(
            "Overhead = "
            + _voice_waits(config, "(as stored in its channel settings)")
            + ". The acks beside the text "
            f"messages' of the e2e steady phase (same rate, {config['e2e_rate']:g}/s)."
        )
        add("")
        add(
            "| backend | overhead p50 ms | overhead p90 ms | overhead max ms "
            "| reply latency p50 ms (debounce included) | answered | transcribed "
            "| voice ack p50 ms | voice ack p99 ms | text ack p50 ms | text ack p99 ms |"
        )
        add("|---|---|---|---|---|---|---|---|---|---|---|")
        for backend, reps in scenarios.items():
            voices = [r["voice"] for r in reps or [] if r.get("voice")]
            if not voices:
                continue
            messages = sum(int(v.get("messages") or 0) for v in voices)
            answered = sum(int(v.get("replies") or 0) for v in voices)
            understood = sum(int(_get(v, "media_states", "understood") or 0) for v in voices)
            add(
                f"| {backend} | {fmt_spread(_values(voices, 'overhead_ms', 'p50'))} "
                f"| {fmt_spread(_values(voices, 'overhead_ms', 'p90'))} "
                f"| {fmt_spread(_values(voices, 'overhead_ms', 'max'))} "
                f"| {fmt_spread(_values(voices, 'reply_latency_ms_p50'))} "
                f"| {answered}/{messages} | {understood}/{messages} "
                f"| {fmt_spread(_values(voices, 'ack', 'p50_ms'))} "
                f"| {fmt_spread(_values(voices, 'ack', 'p99_ms'))} "
                f"| {fmt_spread(_values(reps, 'steady', 'ack', 'p50_ms'))} "
                f"| {fmt_spread(_values(reps, 'steady', 'ack', 'p99_ms'))} |"
            )
        add("")

    # -- resources
    add("## CPU and memory")
    add("")
    add(
        "CPU in % of one core over the phase (100 % = one core busy); RSS in MiB; CPU ms per "
        "message = the CPU time in the phase / webhooks acknowledged in it (in the drain rows, "
        "/ replies sent in it). Plática's CPU includes the replies being worked on (the worker "
        "runs in serve or its child process): in the e2e steady row, every message's reply; in "
        "the voice-note row, measured from the first note to the last reply, each note's "
        "fetch, transcription and reply; in the sweep rows, the backlog's; for postgres-split "
        "only the serve process is counted. "
        "PostgreSQL: the whole server (see *Machine and setup*); sessions: connections opened on "
        "the scenario's database in the phase (connection churn: a pool that keeps its "
        "connections opens none once warm)."
    )
    add("")
    add(
        "| phase | serve CPU % | worker child CPU % | Plática RSS peak MiB | Plática CPU "
        "ms/message | PostgreSQL CPU % (whole server) | PostgreSQL CPU ms/message (whole server) "
        "| PostgreSQL sessions opened | load generator CPU % | fakes CPU % "
        "| machine busy % (of all cores) |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    for backend, reps in scenarios.items():
        if not reps:
            continue
        add(
            _usage_row(
                f"{backend}: e2e steady ({config['e2e_rate']:g}/s)",
                [r.get("steady", {}) | {"ok": r.get("steady", {}).get("messages")} for r in reps],
            )
        )
        voices = [r["voice"] for r in reps if r.get("voice")]
        if voices:
            add(
                _usage_row(
                    f"{backend}: voice notes ({config['voice_rate']:g}/s), to the last reply",
                    [v | {"ok": v.get("messages")} for v in voices],
                )
            )
        for rate in rates:
            phases = [_get(r, "sweep", rate) for r in reps]
            if any(p and "usage" in p for p in phases):
                add(_usage_row(f"{backend}: {rate}/s", phases))
        bar_loads = [r["bar"] for r in reps if r.get("bar")]
        if bar_loads:
            add(
                _usage_row(
                    f"{backend}: one account {config['bar_rate']:g}/s",
                    [b | {"ok": _get(b, "ack", "ok")} for b in bar_loads],
                )
            )
            after = [b["after_load"] for b in bar_loads if (_get(b, "after_load", "ok") or 0) >= 50]
            if after:
                add(_usage_row(f"{backend}: after it, fakes at their latency (per reply)", after))
        add(_usage_row(f"{backend}: closed loop", [r.get("closed") for r in reps]))
        # A drain with almost nothing to do lasts milliseconds: its percentages mean nothing.
        drains = [d for d in (r.get("drain") for r in reps) if d and (d.get("replies") or 0) >= 50]
        if drains:
            add(
                _usage_row(
                    f"{backend}: drain, fakes at 0 (per reply)",
                    [d | {"ok": d.get("replies")} for d in drains],
                )
            )
    if baseline:
        for rate in [str(int(r)) for r in config["baseline_rates"]]:
            phases = [_get(b, "open", rate) for b in baseline]
            cpu = [_get(p, "usage", "cpu_percent", "bare asgi") for p in phases]
            rss = [_get(p, "usage", "rss_peak_mib", "bare asgi") for p in phases]
            per_message = [_cpu_ms_per_message(p, "bare asgi") for p in phases]
            generator = [_get(p, "usage", "cpu_percent", "load generator") for p in phases]
            machine = [_get(p, "usage", "machine_busy_percent") for p in phases]
            add(
                f"| bare ASGI: {rate}/s | {fmt_spread(cpu, 0)} | – | {fmt_spread(rss, 0)} "
                f"| {fmt_spread(per_message, 2)} | – | – | – | {fmt_spread(generator, 0)} | – "
                f"| {fmt_spread(machine, 0)} |"
            )
    add("")

    # -- scale
    scale = results.get("scale") or {}
    if scale:
        factors = " and ".join(f"{f}x" for f in sorted(scale, key=int))
        add(f"## Scale: the same with {factors} more stored messages (PostgreSQL)")
        add("")
        add(
            f"History is seeded before the run with bulk INSERT … SELECT generate_series: "
            f"conversations of 10 messages (5 answered inbound messages and their 5 delivered "
            f"replies) plus a webhook log per inbound message; the base is "
            f"{config['base_messages']:,} messages (about 10 s of traffic at "
            f"{config['bar_rate']:g}/s), all in the one account. Per factor, one database and one "
            "`platica serve`: the "
            f"e2e steady phase {config['repetitions']} times first (no backlog yet), then the "
            f"closed loop ({config['closed_concurrency']} concurrent) {config['repetitions']} "
            "times. The base row comes from the PostgreSQL repetitions above (fresh databases). "
            "The cost per message must not grow with history: compare the CPU ms/message column."
        )
        add("")
        add(
            "| history | stored messages | closed-loop acks/s | ack p50 ms | ack p99 ms "
            "| Plática CPU ms/message | PostgreSQL CPU ms/message (whole server) "
            "| PostgreSQL sessions opened | reply overhead p50 ms | machine busy % |"
        )
        add("|---|---|---|---|---|---|---|---|---|---|")
        pg_reps = scenarios.get("postgres") or []

        def scale_row(label: str, stored: str, reps: Sequence[dict[str, Any]]) -> str:
            closed = [r.get("closed") for r in reps]
            return (
                f"| {label} | {stored} "
                f"| {fmt_spread(_values(reps, 'closed', 'achieved_rate'), 0)} "
                f"| {fmt_spread(_values(reps, 'closed', 'p50_ms'))} "
                f"| {fmt_spread(_values(reps, 'closed', 'p99_ms'))} "
                f"| {fmt_spread([_cpu_ms_per_message(c) for c in closed], 2)} "
                f"| {fmt_spread([_cpu_ms_per_message(c, POSTGRES) for c in closed], 2)} "
                f"| {fmt_spread(_values(reps, 'closed', 'usage', 'postgres_sessions'), 0)} "
                f"| {fmt_spread(_values(reps, 'steady', 'overhead_ms', 'p50'))} "
                f"| {fmt_spread(_values(reps, 'closed', 'usage', 'machine_busy_percent'), 0)} |"
            )

        if pg_reps:
            add(scale_row("base (fresh)", f"< {config['base_messages']:,}", pg_reps))
        for factor, entry in sorted(scale.items(), key=lambda kv: int(kv[0])):
            stored = _get(entry, "rows", "messages")
            add(scale_row(f"{factor}x", fmt(stored, 0) if stored else "–", entry.get("reps") or []))
        add("")
        seeds = ", ".join(
            f"{f}x in {fmt(e.get('seed_seconds'))} s"
            for f, e in scale.items()
            if e.get("seed_seconds")
        )
        if seeds:
            add(f"Seeding took {seeds}.")
        checks = []
        for factor, entry in sorted(scale.items(), key=lambda kv: int(kv[0])):
            if entry.get("checks"):
                verdict = "holds" if entry["checks"].get("exactly_once") else "does NOT hold"
                checks.append(
                    f"{factor}x: exactly once {verdict}: {_once_measured([entry['checks']])}"
                )
        if checks:
            add("")
            add("Correctness at scale (see the table below): " + "; ".join(checks) + ".")
            add("")

    # -- correctness
    add("## Correctness inside the run")
    add("")
    add(
        "Each repetition (and each scale factor) ends with a drain: the fakes at 0 until every "
        "message is settled in the database, at most "
        f"{fmt(config.get('drain_seconds'), 0)} s and never past the time budget. Then every "
        "message acknowledged in it (every phase) is checked as *Machine and setup* says: "
        "stored once, answered by exactly one reply that reached Twilio, no send the database "
        "does not know. A message still unanswered when the drain ends counts against *exactly "
        "once*. *Backlog*: messages still waiting for their reply (or replies not yet sent) "
        "when the drain began; the drain's seconds run until its last reply (or until it gave "
        "up); its replies per second are over the steady middle."
    )
    add("")
    add(
        "| scenario | repetition | acknowledged | stored once | answered exactly once "
        "| answered 2+ times | unanswered at the end | of which not to be answered (skipped) "
        "| fallback | replies | sends unknown to the database | backlog at the drain | drain s "
        "| drain replies/s | exactly once |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows: list[tuple[str, str, dict[str, Any]]] = [
        (backend, str(index), rep)
        for backend, reps in scenarios.items()
        for index, rep in enumerate(reps, 1)
    ]
    rows += [
        (f"scale {factor}x", "all", entry)
        for factor, entry in sorted(scale.items(), key=lambda kv: int(kv[0]))
        if entry.get("checks")
    ]
    for name, which, rep in rows:
        c = rep.get("checks", {})
        drain = rep.get("drain") or {}
        seconds = fmt(drain.get("seconds"))
        if drain.get("stopped_by"):
            seconds += f" (stopped by the {drain['stopped_by']})"
        add(
            f"| {name} | {which} | {_n(c.get('acknowledged'))} | {_n(c.get('stored'))} "
            f"| {_n(c.get('answered_once'))} | {_n(c.get('answered_twice_or_more'))} "
            f"| {_n(c.get('unanswered'))} | {_n(c.get('skipped'))} | {_n(c.get('fallback'))} "
            f"| {_n(c.get('replies'))} | {_n(c.get('sends_not_in_database'))} "
            f"| {_n(drain.get('backlog'))} | {seconds} "
            f"| {fmt(drain.get('replies_per_second'))} "
            f"| {'yes' if c.get('exactly_once') else 'NO'} |"
        )
    add("")

    # -- profile
    profile = results.get("profile")
    if profile and profile.get("samples"):
        add(f"## Profile: `platica serve` under {profile['rate']:g} webhooks/s (py-spy)")
        add("")
        add(
            f"{profile['samples']} samples (non-idle threads). Plática's CPU during the profile: "
            f"{fmt(profile.get('cpu_percent'), 0)} % of one core; ack p99 "
            f"{fmt(_get(profile, 'ack', 'p99_ms'))} ms (py-spy slows the process it samples)."
        )
        add("")
        total = profile["samples"]
        add("| package (inclusive) | share of samples |")
        add("|---|---|")
        for name, count in profile["inclusive_by_package"][:12]:
            add(f"| {escape(name)} | {100 * count / total:.0f} % |")
        add("")
        add("| Plática function (inclusive) | share of samples |")
        add("|---|---|")
        for name, count in profile["inclusive_by_platica_function"][:12]:
            add(f"| `{name}` | {100 * count / total:.0f} % |")
        add("")
        add("| function (self) | share of samples |")
        add("|---|---|")
        for name, count in profile["self_by_function"][:12]:
            add(f"| `{name}` | {100 * count / total:.1f} % |")
        add("")

    if FINDINGS.exists():
        add(FINDINGS.read_text().rstrip())
        add("")

    notes = list(results.get("notes") or [])
    notes += [f"skipped for the time budget: {s}" for s in results.get("skipped") or []]
    if notes:
        add("## Notes from this run")
        add("")
        for note in notes:
            add(f"- {note}")
        add("")

    add("## Reproduce")
    add("")
    add("```sh")
    add("make bench                                  # everything, under 10 minutes")
    add(".venv/bin/python -m bench.run --quick       # a one-minute smoke test of the harness")
    add(".venv/bin/python -m bench.run --profile     # plus a py-spy profile (pip install py-spy)")
    add(".venv/bin/python -m bench.run --help        # rates, repetitions, backends, budget…")
    add("```")
    add("")
    add(
        "PostgreSQL comes from `BENCH_DATABASE_URL`, else `TEST_DATABASE_URL`, else "
        "`postgresql://postgres@127.0.0.1:5432/postgres`; the run creates and drops its own "
        "databases there. Raw results (JSON) and every process's log stay in the work directory "
        "the run prints."
    )
    add("")

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines))

    series: dict[str, list[tuple[float, tuple[float, float, float], str]]] = {}
    for backend in present:
        for key, label in (("p99_ms", "p99"), ("p50_ms", "p50")):
            series[f"{backend} {label}"] = [
                (float(rate), _sweep_spread(scenarios[backend], rate, key), label) for rate in rates
            ]
    if baseline:
        series["bare ASGI p99"] = [
            (float(rate), spread(_values(baseline, "open", rate, "p99_ms")), "p99")
            for rate in [str(int(r)) for r in config["baseline_rates"]]
        ]
    chart_path.write_text(chart_svg(series, config["bar_p99_ms"], config["bar_rate"]))


def main() -> None:
    """Re-render a report from a run's raw results: python -m bench.report RESULTS.json OUT.md"""
    import json
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.report RESULTS.json OUTPUT.md")
    write(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
