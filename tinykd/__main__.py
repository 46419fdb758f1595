"""`python -m tinykd` runs the CLI."""

from tinykd.cli import main

main()
