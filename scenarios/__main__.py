"""`python -m scenarios ...` runs the same typer app as the `scenarios` console script."""

from scenarios.cli import app

app(prog_name="scenarios")
