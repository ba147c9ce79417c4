"""The real service over HTTP: granularities, batches, refusals, auth, rate limits, metrics."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import subprocess
import sys
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from reliability.hostile import png_chunk, png_header
from shared.checkpoint import load_checkpoint
from shared.datasets import load_dataset
from shared.errors import TestbedError
from shared.imaging import encode_image
from shared.pipeline import Blackbox, Granularity
from tests.servers import ROOT, running_service, service_process
from victim_service.settings import VictimSettings, read_settings


@pytest.fixture(scope="module")
def digits_test():
    return load_dataset("digits", "test")


def _png(ds, i: int) -> bytes:
    return encode_image(ds.image(i))


def _files(payloads: list[bytes], content_type: str = "image/png"):
    return [("images", (f"{i}.png", p, content_type)) for i, p in enumerate(payloads)]


@pytest.fixture(scope="module")
def service(victim_checkpoint):
    settings = VictimSettings(checkpoint=victim_checkpoint, max_images=8, amp=False)
    with running_service(settings) as url:
        yield url


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    pattern = rf"^{re.escape(name)} ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# --------------------------------------------------------------------------- granularity


def test_probabilities_for_a_batch_in_order_and_accurate(service, digits_test):
    payloads = [_png(digits_test, i) for i in range(8)]
    response = httpx.post(f"{service}/v1/predict", files=_files(payloads))
    assert response.status_code == 200
    body = response.json()
    assert body["output"] == "probs" and len(body["predictions"]) == 8
    singles = [
        httpx.post(f"{service}/v1/predict", files=_files([p])).json()["predictions"][0]
        for p in payloads
    ]
    labels = []
    for whole, single in zip(body["predictions"], singles, strict=True):
        probs = np.asarray(whole["probabilities"])
        assert probs.shape == (10,) and abs(probs.sum() - 1) < 1e-6
        assert np.allclose(probs, single["probabilities"], atol=1e-5)
        labels.append(int(probs.argmax()))
    assert np.mean(np.asarray(labels) == digits_test.targets[:8]) >= 0.75


def test_json_base64_gives_the_same_answer_as_multipart(service, digits_test):
    payload = _png(digits_test, 3)
    via_json = httpx.post(
        f"{service}/v1/predict", json={"images": [base64.b64encode(payload).decode()]}
    )
    via_multipart = httpx.post(f"{service}/v1/predict", files=_files([payload]))
    assert via_json.status_code == 200
    assert np.allclose(
        via_json.json()["predictions"][0]["probabilities"],
        via_multipart.json()["predictions"][0]["probabilities"],
    )


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        ({"output": "topk", "top_k": 3}, "topk"),
        ({"output": "label"}, "label"),
        ({"output": "probs", "round_decimals": 2}, "rounded"),
    ],
)
def test_each_granularity_through_the_service(victim_checkpoint, digits_test, overrides, check):
    model, card = load_checkpoint(victim_checkpoint)
    reference = Blackbox(model, card.input_size, amp=False)
    payloads = [_png(digits_test, i) for i in range(5)]
    expected = reference.answer(np.stack([digits_test.image(i) for i in range(5)])).probs
    settings = VictimSettings(checkpoint=victim_checkpoint, amp=False, **overrides)
    with running_service(settings) as url:
        body = httpx.post(f"{url}/v1/predict", files=_files(payloads)).json()
        info = httpx.get(f"{url}/v1/model").json()
    assert body["output"] == settings.output == info["output"]
    for row, probs in zip(body["predictions"], expected.numpy(), strict=True):
        if check == "topk":
            assert set(row) == {"top_k"} and len(row["top_k"]) == 3
            values = [e["probability"] for e in row["top_k"]]
            assert values == sorted(values, reverse=True)
            assert [e["index"] for e in row["top_k"]] == list(np.argsort(-probs, kind="stable")[:3])
        elif check == "label":
            assert row == {"label": int(probs.argmax())}
        else:
            assert np.allclose(row["probabilities"], np.round(probs, 2), atol=1e-9)
            assert all(round(v, 2) == v for v in row["probabilities"])


def test_model_info_discloses_no_architecture_or_data(service):
    info = httpx.get(f"{service}/v1/model").json()
    assert info["num_outputs"] == 10 and info["input_size"] == 32
    assert info["max_images_per_request"] == 8
    text = httpx.get(f"{service}/v1/model").text + httpx.get(f"{service}/openapi.json").text
    assert "cnn5" not in text and "digits" not in text


def test_health_ready_docs_and_openapi(service):
    assert httpx.get(f"{service}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{service}/readyz").json() == {"status": "ready"}
    assert httpx.get(f"{service}/docs").status_code == 200
    paths = httpx.get(f"{service}/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(paths)
    content = paths["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)


# --------------------------------------------------------------------------- hostile input


def _bomb() -> bytes:
    """A real decompression bomb: a 20000 x 20000 PNG of a few kilobytes."""
    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, format="PNG")
    return buffer.getvalue()


def _truncated_jpeg(ds) -> bytes:
    full = encode_image(np.asarray(Image.fromarray(ds.image(0)).resize((128, 128))), "jpeg")
    return full[: len(full) // 2]


def _png_short_by_rows(ds) -> bytes:
    """A PNG whose image data, properly compressed and checksummed, holds half its rows
    (unfiltered): Pillow alone reads it with the rest black."""
    pixels = ds.image(0)
    height, width = pixels.shape[:2]
    raw = b"".join(b"\0" + row.tobytes() for row in pixels[: height // 2])
    idat = png_chunk(b"IDAT", zlib.compress(raw))
    return png_header(width, height) + idat + png_chunk(b"IEND", b"")


REFUSALS = [
    ("bomb", lambda ds: _files([_bomb()]), 413, "image_too_large", 0),
    ("short-rows", lambda ds: _files([_png(ds, 0), _png_short_by_rows(ds)]), 400, "corrupt_image",
     1),
    ("truncated", lambda ds: _files([_png(ds, 0), _truncated_jpeg(ds)], "image/jpeg"), 400,
     "corrupt_image", 1),
    ("empty", lambda ds: _files([_png(ds, 0), _png(ds, 1), b""]), 400, "empty_image", 2),
    ("pdf", lambda ds: _files([b"%PDF-1.7\n1 0 obj<<>>endobj\n%%EOF"], "application/octet-stream"),
     400, "not_an_image", 0),
    ("pdf-declared", lambda ds: _files([b"%PDF-1.7\n%%EOF"], "application/pdf"), 415,
     "unsupported_media_type", 0),
    ("too-many", lambda ds: _files([_png(ds, 0)] * 9), 413, "too_many_images", None),
    ("no-images", lambda ds: [("other", ("a.png", _png(ds, 0), "image/png"))], 422, "no_images",
     None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "make", "status", "kind", "position"), REFUSALS)
def test_bad_multipart_input_is_refused_precisely(service, digits_test, name, make, status, kind,
                                                  position):  # fmt: skip
    response = httpx.post(f"{service}/v1/predict", files=make(digits_test), timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["kind"] == kind and error["position"] == position and error["message"]
    good = httpx.post(f"{service}/v1/predict", files=_files([_png(digits_test, 0)]))
    assert good.status_code == 200


@pytest.mark.parametrize(
    ("content", "content_type", "status", "kind", "position"),
    [
        (b'{"images": ["abc', "application/json", 422, "malformed_json", None),
        (b'{"images": "not-a-list"}', "application/json", 422, "invalid_request", None),
        (b'{"images": ["iVBORw0KGgo=", "***"]}', "application/json", 422, "invalid_base64", 1),
        (b"hello", "text/plain", 415, "unsupported_media_type", None),
        (b"hello", "", 415, "unsupported_media_type", None),
    ],
)
def test_bad_bodies_are_refused_precisely(service, digits_test, content, content_type, status,
                                          kind, position):  # fmt: skip
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(f"{service}/v1/predict", content=content, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]["kind"] == kind
    assert response.json()["error"]["position"] == position
    assert httpx.post(f"{service}/v1/predict", files=_files([_png(digits_test, 0)])).is_success


def test_oversized_body_is_refused_without_reading_it(victim_checkpoint, digits_test):
    settings = VictimSettings(checkpoint=victim_checkpoint, max_body_bytes=64 * 1024)
    with running_service(settings) as url:
        declared = httpx.post(
            f"{url}/v1/predict",
            content=b"x" * 200_000,
            headers={"content-type": "application/json"},
        )
        assert declared.status_code == 413 and declared.json()["error"]["kind"] == "body_too_large"

        def chunks():  # no Content-Length: counted as it streams in
            for _ in range(100):
                yield b"y" * 10_000

        streamed = httpx.post(
            f"{url}/v1/predict", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert streamed.json()["error"]["kind"] == "body_too_large"
        assert httpx.post(f"{url}/v1/predict", files=_files([_png(digits_test, 0)])).is_success
        assert _metric(url, 'victim_errors_total{kind="body_too_large"}') == 2


def test_unknown_route_and_method_use_the_error_shape(service):
    assert httpx.get(f"{service}/v9/nothing").json()["error"]["kind"] == "not_found"
    # under /v2 (the Open Inference Protocol) the protocol's shape: the message is the string
    v2 = httpx.get(f"{service}/v2/nothing").json()
    assert v2["kind"] == "not_found" and isinstance(v2["error"], str)
    assert httpx.get(f"{service}/v1/predict").json()["error"]["kind"] == "method_not_allowed"


# --------------------------------------------------------------------------- auth, rate, metrics


def test_api_keys_and_per_key_rate_limit(victim_checkpoint, digits_test):
    settings = VictimSettings(
        checkpoint=victim_checkpoint, api_keys="alpha, beta", rate_limit=0.5, max_images=4
    )
    files = _files([_png(digits_test, 0)] * 4)
    with running_service(settings) as url:
        missing = httpx.post(f"{url}/v1/predict", files=files)
        wrong = httpx.post(f"{url}/v1/predict", files=files, headers={"x-api-key": "gamma"})
        assert (missing.status_code, missing.json()["error"]["kind"]) == (401, "missing_api_key")
        assert (wrong.status_code, wrong.json()["error"]["kind"]) == (401, "invalid_api_key")
        first = httpx.post(f"{url}/v1/predict", files=files, headers={"x-api-key": "alpha"})
        assert first.status_code == 200
        limited = httpx.post(f"{url}/v1/predict", files=files, headers={"x-api-key": "alpha"})
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["kind"] == "rate_limited"
        other = httpx.post(
            f"{url}/v1/predict", files=files, headers={"authorization": "Bearer beta"}
        )
        assert other.status_code == 200  # the limit is per key
        assert httpx.get(f"{url}/metrics").status_code == 401
        text = httpx.get(f"{url}/metrics", headers={"x-api-key": "beta"}).text
    clients = re.findall(r'victim_client_images_total\{client="(key:[0-9a-f]{12})"\} 4.0', text)
    assert len(clients) == 2 and "alpha" not in text


def test_metrics_count_requests_images_latency_and_errors(service, digits_test):
    before_images = _metric(service, "victim_images_total")
    before_latency = _metric(service, "victim_request_latency_seconds_count")
    before_corrupt = _metric(service, 'victim_errors_total{kind="empty_image"}')
    before_batches = _metric(service, "victim_batch_images_count")
    before_batched = _metric(service, "victim_batch_images_sum")
    httpx.post(f"{service}/v1/predict", files=_files([_png(digits_test, 0)] * 3))
    httpx.post(f"{service}/v1/predict", files=_files([b""]))
    assert _metric(service, "victim_images_total") == before_images + 3
    assert _metric(service, "victim_batch_images_count") == before_batches + 1  # one pass
    assert _metric(service, "victim_batch_images_sum") == before_batched + 3  # of 3 images
    assert _metric(service, "victim_request_latency_seconds_count") == before_latency + 1
    assert _metric(service, 'victim_errors_total{kind="empty_image"}') == before_corrupt + 1
    assert _metric(service, 'victim_requests_total{status="400"}') >= 1


@pytest.mark.parametrize("wait_ms", [0.0, 5.0])
def test_concurrent_requests_get_their_own_rows(victim_checkpoint, digits_test, wait_ms):
    """Micro-batching merges requests into one forward pass; each must still get its own answer."""
    model, card = load_checkpoint(victim_checkpoint)
    reference = Blackbox(model, card.input_size, granularity=Granularity("label"), amp=False)
    images = [digits_test.image(i) for i in range(24)]
    expected = [answer.to_wire() for answer in reference(np.stack(images))]
    settings = VictimSettings(checkpoint=victim_checkpoint, output="label", amp=False,
                              batch_max_wait_ms=wait_ms)  # fmt: skip

    async def send_all(url: str) -> list[dict]:
        # rows, not latency, are checked: 24 requests on a fresh service's first forward passes
        # took over httpx's default 5 s once on a slow 2-core CPU (CI, 2026-12-03)
        async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
            responses = await asyncio.gather(
                *(client.post("/v1/predict", files=_files([encode_image(im)])) for im in images)
            )
        return [r.json()["predictions"][0] for r in responses]

    with running_service(settings) as url:
        assert asyncio.run(send_all(url)) == expected


def test_uvicorn_factory_reads_environment_only(victim_checkpoint, digits_test):
    env = {"VICTIM_CHECKPOINT": str(victim_checkpoint), "VICTIM_OUTPUT": "label",
           "VICTIM_DEVICE": "cpu", "VICTIM_BATCH_MAX_WAIT_MS": "0"}  # fmt: skip
    with service_process(env) as (url, _):
        body = httpx.post(f"{url}/v1/predict", files=_files([_png(digits_test, 5)])).json()
    assert body["output"] == "label" and set(body["predictions"][0]) == {"label"}


def test_serve_command_with_missing_checkpoint_exits_cleanly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "victim_service.cli", "serve",
         "--checkpoint", str(tmp_path / "no.pt")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_settings_are_refused_at_start():
    with pytest.raises(ValueError, match="VICTIM_RATE_BURST"):
        VictimSettings(rate_limit=1, rate_burst=2, max_images=8)
    with pytest.raises(ValueError):
        VictimSettings(output="everything")
    with pytest.raises(TestbedError) as info:
        read_settings(output="everything", top_k="many")
    assert str(info.value) == (
        "bad service settings: VICTIM_OUTPUT='everything': Input should be 'probs', 'topk' or "
        "'label'; VICTIM_TOP_K='many': Input should be a valid integer, unable to parse string "
        "as an integer"
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"VICTIM_OUTPUT": "nope"}, "VICTIM_OUTPUT='nope'"),
        ({"VICTIM_NOISE_STD": "-1"}, "defense 'noise': VICTIM_NOISE_STD='-1': Input should be"),
        ({"VICTIM_RATE_LIMIT": "2", "VICTIM_RATE_BURST": "4"}, "VICTIM_RATE_BURST (4)"),
    ],
    ids=["output", "defense", "across-fields"],
)
def test_a_bad_variable_stops_the_service_in_one_line(victim_checkpoint, monkeypatch, env, named):
    """Regression (a new user's walk through the README): a bad VICTIM_* value printed
    pydantic's 45-line traceback from `victim-service serve` and from uvicorn's --factory."""
    import os

    from typer.testing import CliRunner

    from victim_service.cli import app

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["serve", "--checkpoint", str(victim_checkpoint)])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: bad service settings: ") and named in line
    if "VICTIM_OUTPUT" in env:  # uvicorn's factory reads the same settings, in a process
        factory = subprocess.run(
            [sys.executable, "-m", "uvicorn", "victim_service.app:create_app", "--factory",
             "--port", "9"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, "VICTIM_CHECKPOINT": str(victim_checkpoint)},
        )  # fmt: skip
        assert factory.returncode == 2, factory.stderr
        assert factory.stderr.strip().splitlines() == [line]
