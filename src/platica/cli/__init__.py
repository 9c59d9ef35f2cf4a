"""The `platica` command: serve, worker, db upgrade, accounts (and their keys), templates,
simulate, stats, cleanup, doctor, twilio connect. Each command group has its module here; this
one puts them together."""

from __future__ import annotations

import typer

from platica.cli import accounts, database, doctor, serve, simulate, stats, templates, twilio

app = typer.Typer(
    help="Plática: answers WhatsApp and SMS conversations with an LLM, through Twilio.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(database.db_app, name="db")
app.add_typer(accounts.accounts_app, name="accounts")
app.add_typer(templates.templates_app, name="templates")
app.add_typer(twilio.twilio_app, name="twilio")
app.command()(serve.serve)
app.command()(serve.worker)
app.command()(stats.stats)
app.command()(database.cleanup)
app.command()(simulate.simulate)
app.command()(doctor.doctor)


def main() -> None:
    """The `platica` console script (and `python -m platica`)."""
    app()
