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


def _mark(ok: bool | None) -> str:
    return "–" if ok is None else ("✅ holds" if ok else "❌ does not hold")


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


def _sum(checks: Iterable[dict[str, Any]], key: str) -> int:
    return sum(int(c.get(key) or 0) for c in checks)


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


def _once_measured(
    checks: Sequence[dict[str, Any]], drains: Sequence[dict[str, Any] | None]
) -> str:
    """The exactly-once bar's measured text: counts over every acknowledged message."""
    acknowledged = _sum(checks, "acknowledged")
    unanswered = _sum(checks, "unanswered")
    text = (
        f"{_sum(checks, 'answered_once')}/{acknowledged} acknowledged messages answered exactly "
        f"once, {_sum(checks, 'answered_twice_or_more')} two or more times, {unanswered} "
        f"unanswered when the drain ended; {_sum(checks, 'stored')}/{acknowledged} stored once "
        f"(by MessageSid); {_sum(checks, 'recipients_with_two_or_more_replies')} recipients got "
        "two or more replies"
    )
    cut = _drain_cut(drains)
    if cut:
        text += f". **The drain ran out of time** ({cut}) with {unanswered} messages unanswered"
    return text


def _bars(results: dict[str, Any], backend: str) -> list[tuple[str, str, bool | None]]:
    config = results["config"]
    reps = results["scenarios"].get(backend) or []
    if not reps:
        return []
    rate = str(int(config["bar_rate"]))
    p99 = _sweep_spread(reps, rate, "p99_ms")
    errors = sum(int(_get(r, "sweep", rate, "errors") or 0) for r in reps)
    ack_ok = None if math.isnan(p99[2]) else (p99[2] < config["bar_p99_ms"] and errors == 0)
    ack_measured = (
        f"p99 {fmt_spread(_values(reps, 'sweep', rate, 'p99_ms'))} ms "
        f"(worst repetition {fmt(p99[2])} ms), {errors} failed requests"
    )
    not_reached = [r for r in reps if _get(r, "sweep", rate, "p99_ms") is None]
    if not_reached:
        ack_ok = False
        stops = []
        for r in not_reached:
            done = sorted(r.get("sweep", {}).items(), key=lambda kv: float(kv[0]))
            done = [(k, v) for k, v in done if "p99_ms" in v]
            if done:
                last, phase = done[-1]
                stops.append(f"{last}/s (p99 {fmt(phase['p99_ms'], 0)} ms)")
        ack_measured = (
            f"not reached in {len(not_reached)} of {len(reps)} repetitions: the sweep stopped "
            f"at {', '.join(stops) or '?'}"
            + (f"; where reached, {ack_measured}" if not math.isnan(p99[1]) else "")
        )
    overhead = spread(_values(reps, "steady", "overhead_ms", "p50"))
    overhead_ok = None if math.isnan(overhead[1]) else overhead[2] < config["bar_overhead_ms"]
    checks = [r.get("checks", {}) for r in reps]
    once = all(c.get("exactly_once") for c in checks) if checks else None
    return [
        (
            f"Webhook ack p99 < {config['bar_p99_ms']:g} ms at {config['bar_rate']:g}/s",
            ack_measured,
            ack_ok,
        ),
        (
            f"Reply overhead < {config['bar_overhead_ms']:g} ms median",
            f"{fmt_spread(_values(reps, 'steady', 'overhead_ms', 'p50'))} ms "
            "(median per repetition)",
            overhead_ok,
        ),
        (
            "Every message answered exactly once",
            _once_measured(checks, [r.get("drain") for r in reps]),
            once,
        ),
    ]


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
        f"{config['llm_latency']:g}` and `python -m tests.fakes twilio --latency "
        f"{config['twilio_latency']:g}` (no status callbacks)."
    )
    add(
        "- Plática: one `python -m platica serve` (web + worker), `LOG_LEVEL=INFO`, console "
        "logs to a file, signatures checked (TWILIO_AUTH_TOKEN set); worker concurrency: "
        f"{_concurrency(config, meta)}."
    )
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
        "- **Debounce set to 0** (`UPDATE channel_configs SET debounce_seconds = 0` after "
        "start-up): the default 2 s burst window would otherwise dominate reply latency. One "
        "message per sender, all senders distinct, so no burst merging happens anyway."
    )
    add(
        f"- Load generator: an asyncio open-loop driver in the bench process (uvloop), client "
        f"`{config['client']}`: every webhook signed before the clock starts; HTTP/1.1 "
        "keep-alive connections; latency counted from each request's *due* time (no "
        "coordinated omission); its garbage collector paused while it sends. Sweep steps of "
        f"{config['step_seconds']:g} s at {', '.join(rates)} webhooks/s; closed loop at "
        f"{config['closed_concurrency']} concurrent requests for {config['closed_seconds']:g} s."
    )
    add(
        f"- End to end: *steady* = {config['e2e_rate']:g} messages/s for {config['e2e_seconds']:g} s, "
        f"each waited for; *burst* = {config['burst_messages']} messages at "
        f"{config['burst_rate']:g}/s, waited for. Reply overhead = (time the fake Twilio received "
        f"the reply − time the webhook was acknowledged) − {config['llm_latency']:g} s − "
        f"{config['twilio_latency']:g} s (both clocks are the machine's CLOCK_MONOTONIC)."
    )
    add(
        f"- Warm-up: each repetition starts with {config.get('warm_up_rate', 0):g} messages/s for "
        f"{config.get('warm_up_seconds', 0):g} s, each answered, before anything is measured "
        "(a service in use has its connections open and its statements prepared); those "
        "messages are checked like the others."
    )
    add(
        "- Drain: each repetition (and each scale factor) ends by polling the fake Twilio until "
        "every message acknowledged in it has been answered, for at most "
        f"{fmt(config.get('drain_seconds'), 0)} s and never past the run's time budget of "
        f"{fmt(config.get('budget_seconds'), 0)} s; the exactly-once check is made then. The "
        "drain checks correctness, not latency: meanwhile the fakes answer at once, so the "
        "backlog goes as fast as the CPU allows."
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

    # -- end to end
    add("## End to end: replies per second and Plática's own overhead")
    add("")
    add(
        "| backend | replies/s (burst) | overhead p50 ms | overhead p90 ms | overhead max ms "
        "| reply latency p50 ms | e2e messages answered within the phase's wait |"
    )
    add("|---|---|---|---|---|---|---|")
    for backend, reps in scenarios.items():
        if not reps:
            continue
        answered = sum(
            int(_get(r, "steady", "replies") or 0) + int(_get(r, "burst", "replies") or 0)
            for r in reps
        )
        messages = sum(
            int(_get(r, "steady", "messages") or 0) + int(_get(r, "burst", "messages") or 0)
            for r in reps
        )
        add(
            f"| {backend} | {fmt_spread(_values(reps, 'burst', 'replies_per_second'))} "
            f"| {fmt_spread(_values(reps, 'steady', 'overhead_ms', 'p50'))} "
            f"| {fmt_spread(_values(reps, 'steady', 'overhead_ms', 'p90'))} "
            f"| {fmt_spread(_values(reps, 'steady', 'overhead_ms', 'max'))} "
            f"| {fmt_spread(_values(reps, 'steady', 'reply_latency_ms_p50'))} "
            f"| {answered}/{messages} |"
        )
    add("")
    reply_seconds = config["llm_latency"] + config["twilio_latency"]
    concurrency = config.get("worker_concurrency") or meta.get("worker_concurrency_default")
    add(
        f"With a {config['llm_latency']:g} s LLM and a {config['twilio_latency']:g} s Twilio, a "
        f"worker that answers N conversations at once sends at most N / {reply_seconds:g} "
        "replies per second"
        + (
            f": {fmt(concurrency / reply_seconds)}/s at this run's concurrency of {concurrency}"
            if concurrency
            else ""
        )
        + "; below that, CPU (the worker's, the web path's and the database's on the same cores) "
        "is the limit. Replies per second while the backlog drained at the end of each "
        "repetition (the fakes answering at once: what the CPU allows): "
        + "; ".join(
            f"{backend} {fmt_spread(_values(reps, 'drain', 'replies_per_second'))}"
            for backend, reps in scenarios.items()
            if reps
        )
        + "."
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
        "the sweep rows, the backlog's; for postgres-split only the serve process is counted. "
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
        for rate in rates:
            phases = [_get(r, "sweep", rate) for r in reps]
            if any(p and "usage" in p for p in phases):
                add(_usage_row(f"{backend}: {rate}/s", phases))
        add(_usage_row(f"{backend}: closed loop", [r.get("closed") for r in reps]))
        drains = [r.get("drain") for r in reps]
        if any(drains):
            add(
                _usage_row(
                    f"{backend}: drain (per reply)",
                    [d | {"ok": d.get("replies")} for d in drains if d],
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
        add("## Scale: the same with 10x and 100x more stored messages (PostgreSQL)")
        add("")
        add(
            f"History is seeded before the run with bulk INSERT … SELECT generate_series: "
            f"conversations of 10 messages (5 answered inbound messages and their 5 delivered "
            f"replies) plus a webhook log per inbound message; the base is "
            f"{config['base_messages']:,} messages (about 10 s of traffic at "
            f"{config['bar_rate']:g}/s). Per factor, one database and one `platica serve`: the "
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
                    f"{factor}x: exactly once {verdict}: "
                    f"{_once_measured([entry['checks']], [entry.get('drain')])}"
                )
        if checks:
            add("")
            add("Correctness at scale (see the table below): " + "; ".join(checks) + ".")
            add("")

    # -- correctness
    add("## Correctness inside the run")
    add("")
    add(
        "Each repetition (and each scale factor) ends with a drain: until every message "
        "acknowledged in it has been answered, at most "
        f"{fmt(config.get('drain_seconds'), 0)} s and never past the time budget. Then every "
        "acknowledged webhook must be stored exactly once (by MessageSid) and answered exactly "
        "once (every sender sends one message in the whole run, so: its sender got exactly one "
        "reply), and no recipient at all may get two replies. A message still unanswered when "
        "the drain ends counts against *exactly once*. *Backlog*: acknowledged messages not "
        "answered yet when the drain began; the drain's seconds run until the last one's reply "
        "(or until it gave up), and its replies per second count every reply in that time."
    )
    add("")
    add(
        "| scenario | repetition | acknowledged | stored once | answered exactly once "
        "| answered 2+ times | unanswered at the end | backlog at the drain | drain s "
        "| drain replies/s | replies sent | recipients with 2+ replies | exactly once |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
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
    for name, index, rep in rows:
        c = rep.get("checks", {})
        drain = rep.get("drain") or {}
        seconds = fmt(drain.get("seconds"))
        if drain.get("stopped_by"):
            seconds += f" (stopped by the {drain['stopped_by']})"
        add(
            f"| {name} | {index} | {c.get('acknowledged', '–')} | {c.get('stored', '–')} "
            f"| {c.get('answered_once', '–')} | {c.get('answered_twice_or_more', '–')} "
            f"| {c.get('unanswered', '–')} | {drain.get('backlog', '–')} | {seconds} "
            f"| {fmt(drain.get('replies_per_second'))} | {c.get('replies_sent', '–')} "
            f"| {c.get('recipients_with_two_or_more_replies', '–')} "
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
