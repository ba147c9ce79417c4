"""`scenarios audit` against a real service with an API key: the owner's view of the risk."""

from __future__ import annotations

import base64
import json
import re

import pytest
from typer.testing import CliRunner

from scenarios.cli import app
from tests.servers import service_process

KEY = "owner-secret-key"


@pytest.mark.timeout(900)
def test_audit_of_a_keyed_live_endpoint(victim_checkpoint, tmp_path):
    env = {"VICTIM_CHECKPOINT": str(victim_checkpoint), "VICTIM_API_KEYS": KEY}
    out = tmp_path / "audit"
    common = ["audit", "--test-data", "digits", "--pool", "natural", "--pool-size", "1000",
              "--budgets", "600,100,300", "--knockoff-epochs", "30", "--knockoff-min-steps", "0",
              "--knockoff-keep", "last", "--target", "0.9", "--out", str(out)]  # fmt: skip
    # the last epoch's weights: with 60 held-out answers, the best epoch's weights agreed 0.21
    # with a victim trained on 1 thread (epoch 9 of 30), where the last epoch's agreed 0.55
    with service_process(env) as (url, _):
        refused = CliRunner().invoke(app, [*common, "--url", url])
        assert refused.exit_code == 2 and "Traceback" not in refused.output
        assert "401" in refused.output or "API key" in refused.output, refused.output
        result = CliRunner().invoke(app, [*common, "--url", url, "--api-key", KEY])
    assert result.exit_code == 0, result.output

    saved = json.loads((out / "results.json").read_text())
    assert KEY not in (out / "results.json").read_text()  # the key is never written down
    rows = saved["rows"]
    assert [r["budget"] for r in rows] == [100, 300, 600]  # sorted, increasing
    assert saved["victim_accuracy"] > 0.9 and saved["test_images"] == 450
    for r in rows:
        assert 0.0 <= r["recovery"] <= 1.2 and 0.0 <= r["agreement"] <= 1.0
        assert r["query_seconds"] >= 0 and r["train_seconds"] > 0
        assert r["knockoff_accuracy"] == pytest.approx(r["recovery"] * saved["victim_accuracy"])
    assert rows[-1]["agreement"] > rows[0]["agreement"], rows  # more queries, a better copy
    assert rows[-1]["agreement"] > 0.3, rows  # the copy learned: 3x a 10-class guess

    first = next((r for r in rows if r["recovery"] >= 0.9), None)
    assert saved["reached"] == first
    report = (out / "report.md").read_text()
    assert saved["config"]["knockoff_keep"] == "last" and "keeping the last epoch" in report
    if first is None:
        assert "did not reach 90%" in report and "Within 600 queries" in report
    else:
        assert f"with {first['budget']:,} queries and {first['seconds']:,.0f} seconds" in report
    assert report.split("\n\n")[2].strip("*") in result.output  # the verdict is printed too

    page = (out / "report.html").read_text()
    embedded = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert embedded and base64.b64decode(embedded[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in page.replace(url, "")  # self-contained: nothing fetched from elsewhere
    assert all(f"{r['budget']:,}" in page for r in rows)


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--knockoff-keep", "middle", "--knockoff-keep must be one of best, last, not 'middle'"),
    ("--knockoff-arch", "nope", "unknown architecture 'nope'"),
    ("--pool", "nope", "unknown dataset 'nope'"),
    ("--test-data", "nope", "unknown dataset 'nope'"),
    ("--budgets", "500,1k", "--budgets: expected comma-separated positive integers, got '500,1k'"),
])  # fmt: skip
def test_audit_refuses_a_bad_setting_before_asking_anything(option, value, message):
    """Port 9 (discard) has nothing listening: an audit that asked would fail otherwise."""
    given = {"--test-data": "digits", option: value}
    args = [part for item in given.items() for part in item]
    result = CliRunner().invoke(app, ["audit", "--url", "http://127.0.0.1:9", *args])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert message in " ".join(result.output.split()), result.output
