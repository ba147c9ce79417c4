"""`defense`: train and evaluate the OOD filter and the other defenses."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="The victim owner's defenses against model extraction.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """The defender's commands."""


if __name__ == "__main__":
    app()
