"""`platica serve`'s worker child on PostgreSQL: `python -m platica.cli.child SERVE_PID` asks to
die with the server (supervise.py), then runs the `platica worker` command in this process.

Its own module, imported by nothing: `platica serve` names it in the child's command line, so
supervise.py needs nothing of the command line interface.
"""

from __future__ import annotations

import sys

from platica.cli import app
from platica.supervise import run_child


def run_worker() -> None:
    """The `platica worker` command, as if typed (it exits the process when done)."""
    app(["worker"], prog_name="platica")


if __name__ == "__main__":
    sys.exit(run_child(sys.argv[1:], run_worker, prog="python -m platica.cli.child"))
