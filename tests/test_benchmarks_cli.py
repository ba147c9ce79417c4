"""The benchmarks' own command lines: a wrong argument is one line and exit 2, as for the four
commands (`benchmarks.serve --repeats 0` was an IndexError, a missing victim a traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.servers import ROOT


@pytest.mark.parametrize(("args", "line"), [
    (["benchmarks.prada", "--victim", "/no/such/victim.pt"],
     "error: checkpoint /no/such/victim.pt does not exist"),
    (["benchmarks.attack", "--pools", "nope"], "error: unknown dataset 'nope'"),
    (["benchmarks.attack", "--repeats", "0"], "--repeats must be at least 1"),
])  # fmt: skip
def test_a_wrong_argument_is_one_line(args, line):
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert line in done.stderr and "Traceback" not in done.stderr, done.stderr
