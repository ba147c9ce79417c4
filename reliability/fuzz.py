"""Fuzzing the API: schemathesis against its own OpenAPI document, and hypothesis-generated
hostile images through `/v1/predict` (issue 12, part 1).

Every answer must be a 200 with one well-formed prediction or a 4xx in the one error shape;
no 5xx; and a good request sent afterwards is answered exactly as the in-process model answers.
"""

from __future__ import annotations

import base64
import collections
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings

from reliability.common import CheckResult, sample_png
from reliability.hostile import hostile_images
from shared.checkpoint import load_checkpoint
from shared.pipeline import Blackbox
from victim_service.launch import ROOT

ERROR_KEYS = {"kind", "message", "position"}
FINDING = re.compile(r"\s*(- ST|Invalid component|\[\d{3}\]|`\{|_+ [A-Z]+ /)")
"""The lines of schemathesis's report that say what failed (not the long curl replays)."""


def error_shape_problem(response: httpx.Response) -> str | None:
    """None when a refusal has exactly `{"error": {"kind", "message", "position"}}`."""
    try:
        body = response.json()
    except ValueError:
        return "not JSON"
    error = body.get("error") if isinstance(body, dict) else None
    if set(body) != {"error"} or not isinstance(error, dict) or set(error) != ERROR_KEYS:
        return f"shape {body!r:.120}"
    if not (isinstance(error["kind"], str) and isinstance(error["message"], str)):
        return "kind or message not a string"
    if error["position"] not in (None, 0):
        return f"position {error['position']!r} for a one-image request"
    return None


UVICORN_LINE = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL):\s")
"""How uvicorn's loggers begin a line, and the service's own (`victim_service/logs.py`). Any
other line in a service's log is stray: a C library talking on stderr (libpng, libjpeg), or a
traceback."""


def stray_lines(log_text: str) -> list[str]:
    """The non-blank lines of a service's output that its loggers did not write."""
    return [line for line in log_text.splitlines() if line.strip() and not UVICORN_LINE.match(line)]


def check_hostile_images(
    url: str,
    checkpoint: Path,
    cases: int = 5000,
    headers: dict | None = None,
    seed_: int = 0,
    log: Path | None = None,
) -> CheckResult:
    """`log`: the service's stdout and stderr, which must hold no line but its loggers'."""
    result = CheckResult("hostile-images")
    statuses: collections.Counter[int] = collections.Counter()
    families: collections.Counter[str] = collections.Counter()

    with httpx.Client(base_url=url, timeout=60, headers=headers or {}) as client:

        @seed(seed_)
        @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(hostile_images())
        def send(case: tuple[str, bytes]) -> None:
            family, data = case
            families[family.split(":")[0]] += 1
            if sum(families.values()) % 2 == 0:  # every other case as JSON base64
                r = client.post("/v1/predict", json={"images": [base64.b64encode(data).decode()]})
            else:
                files = [("images", ("x", data, "application/octet-stream"))]
                r = client.post("/v1/predict", files=files)
            statuses[r.status_code] += 1
            if r.status_code >= 500:
                result.fail(f"{family}: {r.status_code} {r.text[:120]}")
            elif r.status_code == 200:
                rows = r.json()["predictions"]
                probs = np.asarray(rows[0]["probabilities"]) if len(rows) == 1 else None
                if probs is None or probs.shape != (10,) or abs(probs.sum() - 1) > 1e-4:
                    result.fail(f"{family}: a malformed 200 answer {r.text[:120]}")
            elif (problem := error_shape_problem(r)) is not None:
                result.fail(f"{family}: {r.status_code} refusal not in the error shape: {problem}")

        send()
        good = _good_request_answered_correctly(client, checkpoint)
    result.expect(good, "a good request after the fuzzing was not answered correctly")
    tried = sum(statuses.values())
    result.expect(tried >= cases, f"only {tried} of {cases} cases were sent")
    refused = sum(v for k, v in statuses.items() if 400 <= k < 500)
    stray = stray_lines(log.read_text(errors="replace")) if log is not None else []
    result.expect(not stray, f"the service's log got {len(stray)} stray lines: {stray[:1]}")
    result.figures = {
        "cases": tried, "5xx": sum(v for k, v in statuses.items() if k >= 500),
        "ok_200": statuses[200], "refused_4xx": refused, "families": len(families),
        "good_after": good, "stray_log_lines": len(stray) if log is not None else None,
    }  # fmt: skip
    result.details = {"statuses": dict(statuses), "families": dict(families)}
    return result


def _good_request_answered_correctly(client: httpx.Client, checkpoint: Path) -> bool:
    image, png = sample_png(seed=7)
    r = client.post("/v1/predict", files=[("images", ("a.png", png, "image/png"))])
    if r.status_code != 200:
        return False
    model, card = load_checkpoint(checkpoint)
    expected = Blackbox(model, card.input_size, amp=False).answer(image[None]).probs[0].numpy()
    return bool(np.allclose(r.json()["predictions"][0]["probabilities"], expected, atol=2e-3))


def check_schemathesis(
    url: str, examples: int = 50, api_key: str | None = None, name: str = "schemathesis"
) -> CheckResult:
    """`schemathesis run` with every check and the repository's schemathesis.toml on every route
    of the document, the Open Inference Protocol's /v2 ones included."""
    result = CheckResult(name)
    config = ROOT / "schemathesis.toml"
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
           f"{url}/openapi.json", "--checks", "all", "--max-examples", str(examples),
           "--workers", "1", "--seed", "1", "--no-color"]  # fmt: skip
    if api_key:
        cmd += ["--header", f"X-API-Key: {api_key}"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    output = run.stdout + run.stderr
    generated = re.search(r"(\d+) generated", output)
    operations = re.search(r"Tested: (\d+)", output)
    failures = re.search(r"(\d+) (?:unique )?failures?", output)
    result.figures = {
        "operations": int(operations.group(1)) if operations else 0,
        "cases": int(generated.group(1)) if generated else 0,
        "failures": int(failures.group(1)) if failures and run.returncode else 0,
    }
    if run.returncode != 0:
        found = [line.strip() for line in output.splitlines() if FINDING.match(line)]
        for line in found or output.splitlines()[-20:]:
            result.fail(line[:200])
    result.expect(result.figures["cases"] > 0, "schemathesis generated no case")
    return result
