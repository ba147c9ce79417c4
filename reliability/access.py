"""Access: with keys on, every route but health and readiness needs one; keys never leak; per-key
limits hold under concurrent bursts; pickled-code or corrupted `.pt` files are refused.

The routes are read from the app itself, so routes added later are covered without a change.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from fastapi.routing import iter_route_contexts

from reliability.common import CheckResult, sample_png, service_process
from shared.errors import TestbedError
from victim_service.access import PUBLIC_PATHS
from victim_service.app import create_app
from victim_service.launch import ROOT
from victim_service.settings import VictimSettings


def app_routes(settings: VictimSettings) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, path parameters filled with `x`.

    `iter_route_contexts` walks into included routers (the /v2 router), which `app.routes`
    holds as one opaque entry."""
    routes = []
    for route in iter_route_contexts(create_app(settings).routes):
        if route.path is None:
            continue
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        routes += [(m, path) for m in sorted(getattr(route, "methods", None) or ()) if m != "HEAD"]
    return routes


def _probe_route(
    client: httpx.Client,
    method: str,
    path: str,
    key: str,
    wrong: str,
    seen: list[str],
    result: CheckResult,
) -> None:
    """No key, a wrong key, a wrong bearer: 401 unless public; the right key: never 401."""
    attempts = [({}, "no key"), ({"x-api-key": wrong}, "a wrong key"),
                ({"authorization": f"Bearer {wrong}"}, "a wrong bearer")]  # fmt: skip
    for headers, label in attempts:
        r = client.request(method, path, headers=headers)
        seen.append(r.text + str(r.headers))
        if path in PUBLIC_PATHS:
            result.expect(r.status_code < 400, f"{method} {path} is public, got {r.status_code}")
        else:
            body = r.json()
            kind = body["error"]["kind"] if isinstance(body["error"], dict) else body["kind"]
            result.expect(
                r.status_code == 401 and kind.endswith("api_key"),
                f"{method} {path} with {label}: {r.status_code}, not 401",
            )
    r = client.request(method, path, headers={"x-api-key": key})
    seen.append(r.text + str(r.headers))
    result.expect(r.status_code != 401, f"{method} {path} refused a valid key")


def check_access(checkpoint: Path, workdir: Path, connections: int = 64) -> CheckResult:
    result = CheckResult("access")
    keys = [secrets.token_urlsafe(16) for _ in range(2)]
    wrong = secrets.token_urlsafe(16)
    log = workdir / "access-service.log"
    settings = VictimSettings(checkpoint=checkpoint, api_keys=keys, rate_limit=1.0, max_images=8)
    env = {"VICTIM_CHECKPOINT": str(checkpoint), "VICTIM_API_KEYS": ",".join(keys),
           "VICTIM_RATE_LIMIT": "1", "VICTIM_RATE_BURST": "8", "VICTIM_MAX_IMAGES": "8",
           "VICTIM_DEVICE": "cpu"}  # fmt: skip
    seen: list[str] = []  # every body and header the service sent back
    routes = app_routes(settings)
    with (
        service_process(env, log_level="debug", log_file=log) as (url, _),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        for method, path in routes:
            _probe_route(client, method, path, keys[0], wrong, seen, result)
        ok, limited, others, elapsed = asyncio.run(_burst(url, keys[0], connections))
        allowed = 8 + int(elapsed * 1.0) + 1
        result.expect(ok <= allowed, f"burst: {ok} images answered, the limit allows {allowed}")
        result.expect(others == 0, f"burst: {others} answers neither 200 nor 429")
        _, png = sample_png()
        other_key = client.post(
            "/v1/predict", files=[("images", ("a.png", png, "image/png"))],
            headers={"authorization": f"Bearer {keys[1]}"},
        )  # fmt: skip
        result.expect(other_key.status_code == 200, "the second key was limited by the first")
        seen.append(client.get("/metrics", headers={"x-api-key": keys[0]}).text)
    captured = log.read_text(errors="replace") + "\n".join(seen)
    leaks = [k for k in (*keys, wrong) if k in captured]
    result.expect(not leaks, f"{len(leaks)} keys found in logs, metrics or bodies")
    result.expect(_has_access_log(log), "the service's log holds no request lines: nothing grepped")
    refused = _pickled_and_corrupt_files(checkpoint, workdir, result)
    result.figures = {"routes": len(routes), "burst_connections": connections, "burst_ok": ok,
                      "burst_429": limited, "keys_leaked": len(leaks),
                      "bad_files_refused": refused}  # fmt: skip
    return result


async def _burst(url: str, key: str, connections: int) -> tuple[int, int, int, float]:
    """`connections` separate connections post one image each with one key, all at once."""
    _, png = sample_png()

    async def one() -> int:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            files = [("images", ("a.png", png, "image/png"))]
            r = await client.post("/v1/predict", files=files, headers={"x-api-key": key})
            return r.status_code

    start = time.monotonic()
    codes = await asyncio.gather(*(one() for _ in range(connections)))
    elapsed = time.monotonic() - start
    return (
        codes.count(200),
        codes.count(429),
        len(codes) - codes.count(200) - codes.count(429),
        elapsed,
    )


def _has_access_log(log: Path) -> bool:
    return "POST /v1/predict" in log.read_text(errors="replace")


class _Payload:
    """Pickled code: unpickling it would create `marker` through os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickled_and_corrupt_files(checkpoint: Path, workdir: Path, result: CheckResult) -> int:
    """Checkpoints and OOD artefacts with pickled code, truncated, altered (shapes changed) or
    tampered (well-formed, one weight changed): each refused."""
    from defense.ood import OODFilter
    from shared.checkpoint import load_checkpoint

    marker = workdir / "pwned"
    evil = workdir / "evil.pt"
    torch.save({"format": 1, "card": _Payload(marker), "state_dict": {}}, evil)
    truncated = workdir / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    altered = workdir / "altered.pt"
    payload = torch.load(checkpoint, weights_only=True)
    payload["state_dict"] = {k: v.reshape(-1)[:1] for k, v in payload["state_dict"].items()}
    torch.save(payload, altered)
    tampered = workdir / "tampered.pt"  # well-formed: same shapes, one weight changed
    payload = torch.load(checkpoint, weights_only=True)
    first = next(iter(payload["state_dict"].values()))
    first.view(-1)[0] += 1.0
    torch.save(payload, tampered)
    refused = 0
    for path in (evil, truncated, altered, tampered):
        for loader in (load_checkpoint, OODFilter.load):
            try:
                loader(path)
                result.fail(f"{loader.__qualname__} accepted {path.name}")
            except TestbedError as exc:
                refused += 1
                result.expect("\n" not in str(exc), f"{path.name}: a multi-line message")
            except Exception as exc:  # noqa: BLE001 - any other exception is the defect
                result.fail(f"{loader.__qualname__}({path.name}) raised {type(exc).__name__}")
    served = subprocess.run(
        [sys.executable, "-m", "victim_service.cli", "serve", "--checkpoint", str(evil)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    result.expect(
        served.returncode == 2 and "refused" in served.stderr and "Traceback" not in served.stderr,
        f"serve --checkpoint evil.pt: exit {served.returncode}, {served.stderr.strip()[-200:]!r}",
    )
    result.expect(not marker.exists(), "the pickled code ran")
    return refused
