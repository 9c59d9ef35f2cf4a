"""`python -m platica`: the same as the `platica` command."""

from platica.cli import main

main()
