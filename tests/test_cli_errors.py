"""`shared.cli.friendly`, the wrapper of every command: one line and exit 2 for what the user
can mend, a traceback kept for a bug."""

from __future__ import annotations

import errno

import pytest
import typer
from typer.testing import CliRunner

from shared.cli import friendly, positive_integers
from shared.errors import TestbedError

app = typer.Typer()


@app.command()
@friendly
def fail(kind: str) -> None:
    if kind == "testbed":
        raise TestbedError("the budget must be at least 1")
    if kind == "path":  # what open() raises for --json /no/such/folder/x.json
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/no/such/folder")
    if kind == "disk":
        raise OSError(errno.ENOSPC, "No space left on device", "runs/transfer.sqlite")
    raise OSError("a bug of ours, about no file")


@pytest.mark.parametrize(("kind", "line"), [
    ("testbed", "error: the budget must be at least 1"),
    ("path", "error: /no/such/folder: No such file or directory"),
    ("disk", "error: runs/transfer.sqlite: No space left on device"),
])  # fmt: skip
def test_what_the_user_can_mend_is_one_line(kind, line):
    result = CliRunner().invoke(app, [kind])
    assert result.exit_code == 2 and result.output.strip() == line


def test_an_oserror_about_no_file_keeps_its_traceback():
    result = CliRunner().invoke(app, ["bug"])
    assert result.exit_code == 1 and isinstance(result.exception, OSError)


def test_positive_integers():
    assert positive_integers(" 500, 1000,", "--budgets") == (500, 1000)
    for text in ("", ",", "5,x", "0", "-3,4", "1.5"):
        with pytest.raises(TestbedError, match="--budgets: expected comma-separated positive"):
            positive_integers(text, "--budgets")


def test_a_device_torch_does_not_know_is_one_line():
    """`--device nope` reached torch's RuntimeError listing twenty device types."""
    import torch

    from shared.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(TestbedError, match="unknown device 'nope'; use auto, cpu or cuda"):
        resolve_device("nope")
    if not torch.cuda.is_available():
        with pytest.raises(TestbedError, match="no CUDA GPU is available"):
            resolve_device("cuda")


def test_a_port_past_65535_is_refused_before_serving():
    """uvicorn took --port 99999 and served on another port."""
    from victim_service.cli import app as service

    result = CliRunner().invoke(
        service, ["serve", "--checkpoint", "/no/such.pt", "--port", "99999"]
    )
    assert result.exit_code == 2 and "Invalid value for '--port'" in result.output, result.output
