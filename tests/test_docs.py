"""The documentation names only what exists: every `platica` command and option written in
README.md and docs/*.md is a command of the CLI, every setting-like variable is a Settings field or
in .env.example, every relative link leads to a file of the repository (and its heading or
anchor), and docs/deploy.md's systemd units parse. Its proxy examples: tests/test_docs_proxy.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from platica.cli import app
from platica.config import Settings
from platica.db import Base

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "platica"
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

# Variables the documents name that are not Plática's settings: make's, a shell variable of
# README's examples, those other programs read (uvicorn's FORWARDED_ALLOW_IPS,
# prometheus_client's directory), and the seed services' names Plática warns are ignored. The
# test suite's and the benchmark's own variables (TEST_DATABASE_URL, CI...) are found in their
# code: see harness_variables().
NOT_SETTINGS = {
    "PYTEST_ARGS",
    "TEST_PROCESSES",
    "BENCH_ARGS",
    "KEY",
    "FORWARDED_ALLOW_IPS",
    "PROMETHEUS_MULTIPROC_DIR",
    "WHATSAPP_WEBHOOK_SECRET",
    "SMS_WEBHOOK_SECRET",
}
ENVIRONMENT_READ = re.compile(r"(?:environ\.get\(|environ\[|getenv\()\s*\"([A-Z][A-Z0-9_]*)\"")

# A fenced block, indented too (in a list item).
FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.MULTILINE | re.DOTALL)
# `code`, or ``code with `backticks` in it``: closed by as many backticks as opened it.
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")
# `platica serve --no-worker`, `.venv/bin/platica simulate ...`, `python -m platica db upgrade`;
# not `platica.create_app()`, `src/platica/...` or `platica_replies_total`.
INVOCATION = re.compile(r"(?:(?<=^)|(?<=[\s`(]|/))platica((?:[ \t]+[^\s`|;&#)]+)+)")
VARIABLE = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
ASSIGNMENT = re.compile(r"(?:^|[\s`#])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*)=")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)")
ANCHORED_LINK = re.compile(r"\]\(([^)\s#]*)#([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*$", re.MULTILINE)
EXPLICIT_ANCHOR = re.compile(r'<a id="([^"]+)"')


def code_of(text: str) -> Iterator[str]:
    """The document's code: each fenced block's lines, and each inline code span."""
    for block in FENCE.findall(text):
        yield from block.splitlines()[1:-1]
    outside = FENCE.sub("", text)
    for line in outside.splitlines():
        yield from (span.strip() for _ticks, span in CODE_SPAN.findall(line))


def documented_commands() -> set[str]:
    """`platica WORDS [--option]...` as written: the command path, and each option with it."""
    root = typer.main.get_command(app)
    found: set[str] = set()
    for document in DOCUMENTS:
        for code in code_of(document.read_text()):
            for match in INVOCATION.finditer(code):
                found |= _resolve(root, match.group(1).split())
    return found


def subcommands(command: Any) -> dict[str, Any] | None:
    """A group's commands by name; None for a command (typer brings its own click)."""
    commands: dict[str, Any] | None = getattr(command, "commands", None)
    return commands


def _resolve(root: Any, words: list[str]) -> set[str]:
    """The command the words name (as far as the CLI has it) and the `--options` given to it."""
    if not words or words[0].startswith("-"):
        return set()  # `/srv/platica --shell ...`, `-u platica -f`: not the command
    path = ["platica"]
    command: Any = root
    index = 0
    while index < len(words):
        word, group = words[index], subcommands(command)
        if not re.fullmatch(r"[a-z][a-z-]*", word) or (group is None and command is not None):
            break  # an option or an argument: the command is complete
        path.append(word)
        # An unknown word stays in the path (`platica twilio connect` before it exists), for
        # the caller to report.
        command = group.get(word) if group is not None else None
        index += 1
    if len(path) == 1:
        return set()
    name = " ".join(path)
    options = {word.split("=", 1)[0] for word in words[index:] if word.startswith("--")}
    return {name} | {f"{name} {option}" for option in options}


def cli_has(name: str) -> bool:
    """Whether `platica ...` (with an option at the end, maybe) is in the CLI."""
    command: Any = typer.main.get_command(app)
    words = name.split()[1:]
    option = words.pop() if words and words[-1].startswith("-") else None
    for word in words:
        group = subcommands(command)
        command = group.get(word) if group is not None else None
        if command is None:
            return False
    if option is None:
        return True
    return any(option in (*p.opts, *p.secondary_opts) for p in command.params)


def documented_variables() -> set[str]:
    """Setting-like names: `SOME_NAME` in code, and `NAME=` assignments in code."""
    found: set[str] = set()
    for document in DOCUMENTS:
        for code in code_of(document.read_text()):
            if VARIABLE.match(code.strip()):
                found.add(code.strip())
            found |= set(ASSIGNMENT.findall(code))
    return found


def harness_variables() -> set[str]:
    """The variables the tests and the benchmark read from the environment themselves."""
    code = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    return {name for path in code for name in ENVIRONMENT_READ.findall(path.read_text())}


def known_variables() -> set[str]:
    example = (ROOT / ".env.example").read_text()
    in_example = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, re.MULTILINE))
    return set(Settings.model_fields) | in_example


def linked_files() -> set[str]:
    """Relative links of the documents, as paths from the repository's root."""
    found: set[str] = set()
    for document in DOCUMENTS:
        for target in LINK.findall(document.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (document.parent / target).resolve()
            found.add(str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path))
    return found


def anchors_of(document: Path) -> set[str]:
    """The fragments a link may name in `document`: its headings' slugs, as GitHub makes them
    (lower case, punctuation dropped, spaces to hyphens), and its `<a id>`s."""
    text = FENCE.sub("", document.read_text())
    slugs = {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in HEADING.findall(text)
    }
    return slugs | set(EXPLICIT_ANCHOR.findall(text))


def broken_anchors() -> set[str]:
    """`file#fragment` links whose file exists but has no such heading or anchor."""
    broken: set[str] = set()
    for document in DOCUMENTS:
        for target, fragment in ANCHORED_LINK.findall(document.read_text()):
            if "://" in target:
                continue
            path = (document.parent / target).resolve() if target else document
            if path.exists() and fragment not in anchors_of(path):
                broken.add(f"{path.relative_to(ROOT)}#{fragment}")
    return broken


LOG_CALL = re.compile(
    r"log\.(?:debug|info|warning|error|exception|critical)\(\s*\"([a-z_]+\.[a-z_.]+)\""
)
DOTTED_LITERAL = re.compile(r"\"([a-z_]+\.[a-z_]+)\"")
# `webhook.rejected` in a code span, or a log line's event: `reply.llm_failed  error=...`.
DOTTED_IN_DOCS = re.compile(r"`([a-z_]+\.[a-z_]+)`|\b([a-z_]+\.[a-z_]+)(?=[ \t]+[a-z_]+=)")


def documented_events() -> set[str]:
    """Names in the documents that look like Plática's log events: dotted, with the first part
    of an event Plática logs (`webhook.`, `reply.`, `startup.`...)."""
    sources = [path.read_text() for path in SOURCE.rglob("*.py")]
    kinds = {event.split(".")[0] for text in sources for event in LOG_CALL.findall(text)}
    found: set[str] = set()
    for document in DOCUMENTS:
        for pair in DOTTED_IN_DOCS.findall(document.read_text()):
            found |= {name for name in pair if name and name.split(".")[0] in kinds}
    return found


def unknown_events(names: set[str]) -> set[str]:
    """Those neither a string of the source (an event's name) nor a `table.column`."""
    literals = {
        name for path in SOURCE.rglob("*.py") for name in DOTTED_LITERAL.findall(path.read_text())
    }
    columns = {
        f"{table.name}.{column.name}"
        for table in Base.metadata.tables.values()
        for column in table.columns
    }
    return names - literals - columns


# `/webhook/sms`, `https://PUBLIC/webhook/status`, `GET /api/{channel}/stats`, `/healthz`; not
# `channels/webhook.py`.
HTTP_PATH = re.compile(r"(/(?:webhook|api|healthz|readyz|metrics)(?:/[\w{}.…-]+)*)(?![\w.])")
ANY_SEGMENT = {"...", "…"}


def documented_paths() -> set[str]:
    return {path for document in DOCUMENTS for path in HTTP_PATH.findall(document.read_text())}


def path_matches(written: str, route: str) -> bool:
    """`written` names `route`, or the start of it: segment by segment, a `{placeholder}` on
    either side (or `...`) stands for any value."""
    mine, theirs = written.strip("/").split("/"), route.strip("/").split("/")
    if len(mine) > len(theirs):
        return False
    return all(
        a == b or a in ANY_SEGMENT or a.startswith("{") or b.startswith("{")
        for a, b in zip(mine, theirs, strict=False)
    )


def missing(names: set[str]) -> list[str]:
    """The names, sorted (for a readable assertion)."""
    return sorted(names)


class TestDocumentation:
    def test_the_documents_are_found(self):
        names = {document.name for document in DOCUMENTS}
        assert {"README.md", "deploy.md", "troubleshooting.md", "twilio.md"} <= names

    def test_every_command_written_is_in_the_cli(self):
        commands = documented_commands()
        # The parser finds what the documents show most (a guard against it finding nothing).
        assert {"platica serve", "platica db upgrade", "platica serve --no-worker"} <= commands
        assert missing({name for name in commands if not cli_has(name)}) == []

    def test_every_variable_written_is_a_setting(self):
        variables = documented_variables()
        assert {"DATABASE_URL", "PUBLIC_BASE_URL", "TWILIO_AUTH_TOKEN"} <= variables
        unknown = variables - known_variables() - NOT_SETTINGS - harness_variables()
        assert missing(unknown) == []

    def test_every_relative_link_leads_to_a_file(self):
        links = linked_files()
        assert "docs/deploy.md" in links
        assert missing({link for link in links if not (ROOT / link).exists()}) == []

    def test_every_log_event_written_is_logged(self):
        events = documented_events()
        assert {"webhook.rejected", "reply.llm_failed", "task.parked"} <= events
        assert unknown_events(events) == set()

    def test_every_http_path_written_is_served(self, tmp_path):
        from platica.app import create_app
        from platica.config import load_settings

        database = f"sqlite+aiosqlite:///{tmp_path}/platica.db"
        application = create_app(load_settings(_env_file=None, DATABASE_URL=database))
        routes = list(application.openapi()["paths"])
        paths = documented_paths()
        assert {"/webhook/sms", "/webhook/whatsapp", "/webhook/status", "/healthz"} <= paths
        unserved = {path for path in paths if not any(path_matches(path, r) for r in routes)}
        assert unserved == set()

    def test_every_anchor_linked_to_exists(self):
        assert broken_anchors() == set()


class TestParsing:
    """The checks above find what they look for, and would catch a wrong name."""

    def test_a_command_path_stops_at_its_arguments(self):
        root = typer.main.get_command(app)
        assert _resolve(root, ["accounts", "create", "Panadería"]) == {"platica accounts create"}
        assert _resolve(root, ["simulate", "--channel", "whatsapp", "--from", "+34600111222"]) == {
            "platica simulate",
            "platica simulate --channel",
            "platica simulate --from",
        }

    def test_an_unknown_command_or_option_is_not_in_the_cli(self):
        assert cli_has("platica accounts keys list")
        assert cli_has("platica serve --no-worker")
        assert not cli_has("platica serve --workers")
        assert not cli_has("platica accounts nonsense")
        assert not cli_has("platica nonsense")

    def test_variables_are_read_from_spans_blocks_and_assignments(self):
        text = "Set `OPENAI_API_KEY`, then `HOST=0.0.0.0`.\n```sh\n# PORT=8000\nA_B=1 platica serve\n```\n"
        spans = list(code_of(text))
        assert "OPENAI_API_KEY" in spans
        names = {name for code in spans for name in ASSIGNMENT.findall(code)}
        assert names == {"HOST", "PORT", "A_B"}

    def test_anchors_are_github_slugs(self, tmp_path):
        document = tmp_path / "guide.md"
        document.write_text(
            "## PostgreSQL / Supabase\n### 3. The US: A2P 10DLC, toll-free\n"
            '<a id="limits"></a>\n```sh\n# not a heading\n```\n'
        )
        assert anchors_of(document) == {
            "postgresql--supabase",
            "3-the-us-a2p-10dlc-toll-free",
            "limits",
        }

    def test_an_event_name_misspelt_is_unknown(self):
        assert unknown_events({"reply.llm_failed", "accounts.auth_user_id"}) == set()
        assert unknown_events({"reply.llm_failure"}) == {"reply.llm_failure"}

    def test_paths_match_routes_by_segment(self):
        route = "/api/{channel}/conversations/{conversation_id}/history"
        assert path_matches("/api/whatsapp/conversations/42/history", route)
        assert path_matches("/api/{channel}/...", route)
        assert not path_matches("/api/{channel}/conversation/{id}/history", route)
        assert not path_matches("/webhook/voice", "/webhook/sms")
        assert HTTP_PATH.findall("see channels/webhook.py and https://PUBLIC/webhook/sms") == [
            "/webhook/sms"
        ]

    def test_spans_with_backticks_and_indented_blocks_are_code(self):
        text = (
            "Run ``DATABASE_URL: ...; run `platica db upgrade` `` or `platica serve`.\n"
            "- a list item:\n\n  ```sh\n  platica accounts list\n  ```\n"
        )
        assert list(code_of(text)) == [
            "  platica accounts list",
            "DATABASE_URL: ...; run `platica db upgrade`",
            "platica serve",
        ]

    def test_package_paths_are_not_commands(self):
        codes = ["platica.create_app()", "src/platica/cli/serve.py", "platica_replies_total"]
        assert [m for code in codes for m in INVOCATION.finditer(code)] == []
        [match] = INVOCATION.finditer(".venv/bin/platica simulate --channel sms")
        assert match.group(1).split() == ["simulate", "--channel", "sms"]


class TestSystemdUnits:
    """docs/deploy.md's units, checked by systemd's own parser (where systemd-analyze is)."""

    def test_the_units_parse_without_a_warning(self, tmp_path):
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            pytest.skip("systemd-analyze is not installed: the units are not parsed")
        text = (ROOT / "docs" / "deploy.md").read_text()
        blocks = re.findall(r"^```ini\n(.*?)^```", text, re.S | re.M)
        assert len(blocks) == 2, "docs/deploy.md has the server's unit and the workers' template"
        executable = Path(sys.executable).with_name("platica")
        units = []
        for name, block in zip(
            ("platica.service", "platica-worker@1.service"), blocks, strict=True
        ):
            # Here, the paths of this checkout (the parser checks the program exists).
            unit = tmp_path / name
            unit.write_text(
                block.replace("/srv/platica/venv/bin/platica", str(executable))
                .replace("EnvironmentFile=/etc/", "EnvironmentFile=-/etc/")
                .replace("WorkingDirectory=/var/lib/platica", f"WorkingDirectory={tmp_path}")
            )
            units.append(str(unit))
        result = subprocess.run(
            [analyze, "verify", "--man=no", *units], capture_output=True, text=True, timeout=60
        )
        # Unknown keys and bad values are warnings on stderr (the status stays 0).
        assert result.stderr.strip() == ""
        assert result.returncode == 0
