"""`attacker query --protocol v2`: against our own /v2 routes and against a third-party Open
Inference Protocol server (KServe's model server from PyPI, serving the victim as a custom
model), both started by the test on loopback."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attacker.cli import app as cli
from attacker.export import export_run
from attacker.query import QueryConfig, run_query
from attacker.store import (
    iter_queries,
    load_pool,
    load_run,
    open_store,
    pixels_digest,
    sent_image,
)
from benchmarks.common import throwaway_victim
from shared.checkpoint import load_checkpoint
from tests.servers import ROOT, free_port, running_service
from victim_service.settings import VictimSettings


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 32x32 cnn5: the protocol does not depend on the victim's accuracy."""
    return throwaway_victim(tmp_path_factory.mktemp("victim") / "v.pt", arch="cnn5")


def _serve(victim: Path, **kwargs):
    # batching off: each request runs alone, so the same images always get the same answers
    return running_service(
        VictimSettings(checkpoint=victim, device="cpu", batch_max_wait_ms=0, amp=False, **kwargs)
    )


def _query(url: str, db: Path, budget: int = 24, **kwargs):
    config = QueryConfig(
        url=url, pool="noise", budget=budget, db=db, batch_size=8, concurrency=4,
        pool_size=64, pool_image_size=32, progress=False, **kwargs,
    )  # fmt: skip
    return run_query(config)


def _answers(db: Path) -> dict[int, dict]:
    with open_store(db)() as session:
        run = load_run(session, None)
        return {q.position: q.answer for q in iter_queries(session, run.id)}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_run_stores_what_a_v1_run_stores(victim, tmp_path, binary):
    with _serve(victim) as url:
        v1 = _query(url, tmp_path / "v1.sqlite")
        v2 = _query(url, tmp_path / "v2.sqlite", protocol="v2", binary=binary)
    assert v1.complete and v2.complete and v2.answered == 24
    a1, a2 = _answers(tmp_path / "v1.sqlite"), _answers(tmp_path / "v2.sqlite")
    assert a1.keys() == a2.keys()
    for position in a1:
        np.testing.assert_allclose(
            a2[position]["probabilities"], a1[position]["probabilities"], atol=1e-6
        )
    with open_store(tmp_path / "v2.sqlite")() as session:
        run = load_run(session, None)
        assert run.victim_url == f"{url}/v2/models/victim"
        assert run.params["image_format"] == "raw" and run.params["protocol"] == "v2"
        pool = load_pool(run)
        for q in iter_queries(session, run.id):  # the hash is that of the pixels sent
            image = sent_image(run, pool, q.pool_index)
            assert hashlib.sha256(image.tobytes()).hexdigest() == q.sha256
            assert pixels_digest(image) == q.pixels_sha256
    exported = export_run(tmp_path / "v2.sqlite", tmp_path / "export")
    assert exported.images == 24
    assert next((tmp_path / "export").rglob("*.png")).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("output", "decimals"), [("topk", None), ("topk", 1), ("label", None)])
def test_v2_run_converts_topk_and_labels_to_the_v1_answers(victim, tmp_path, output, decimals):
    """Rounded top-k values travel as the classification extension's text ("0.1:3"): read
    back, they are the /v1 JSON's values."""
    with _serve(victim, output=output, top_k=3, round_decimals=decimals) as url:
        assert _query(url, tmp_path / "v1.sqlite").complete
        assert _query(url, tmp_path / "v2.sqlite", protocol="v2").complete
    a1, a2 = _answers(tmp_path / "v1.sqlite"), _answers(tmp_path / "v2.sqlite")
    for position, answer in a1.items():
        if output == "label":
            assert a2[position] == answer
        else:
            assert [e["index"] for e in a2[position]["top_k"]] == [
                e["index"] for e in answer["top_k"]
            ]
            np.testing.assert_allclose(
                [e["probability"] for e in a2[position]["top_k"]],
                [e["probability"] for e in answer["top_k"]],
            )


def test_cli_protocol_errors_are_one_line(victim, tmp_path):
    runner = CliRunner()
    args = ["query", "--pool", "noise", "--budget", "8", "--db", str(tmp_path / "t.sqlite")]
    result = runner.invoke(cli, [*args, "--url", "http://127.0.0.1:9", "--protocol", "v3"])
    assert result.exit_code == 2 and "unknown protocol 'v3'" in result.output
    with _serve(victim) as url:
        result = runner.invoke(cli, [*args, "--url", url, "--protocol", "v2", "--model", "x"])
    assert result.exit_code == 2
    assert "unknown model 'x'" in result.output and "--model" in result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def kserve_server(victim):
    """KServe's model server (kserve SDK) on loopback, serving the victim as model 'stolen'."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.kserve_victim", str(victim), str(port), "stolen"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, "KServe's model server exited"
            assert time.monotonic() < deadline, "KServe's model server did not become ready"
            try:
                if httpx.get(f"{url}/v2/models/stolen/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model_name", ["stolen", "stolen-nchw"], ids=["uint8-nhwc", "fp32-nchw"])
def test_cli_queries_a_third_party_kserve_server(
    victim, kserve_server, tmp_path, binary, model_name
):
    """The input's layout and type come from the model's metadata: UINT8 pixels in NHWC, or
    FP32 values in [0, 1] in NCHW (the layout of a model exported from PyTorch)."""
    db = tmp_path / "kserve.sqlite"
    result = CliRunner().invoke(
        cli,
        ["query", "--url", kserve_server, "--protocol", "v2", "--model", model_name,
         "--pool", "noise", "--pool-size", "64", "--pool-image-size", "32", "--budget", "20",
         "--batch-size", "8", "--db", str(db), "--binary" if binary else "--json-tensors"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "20/20 images answered" in result.output
    model, _ = load_checkpoint(victim)
    with open_store(db)() as session:
        run = load_run(session, None)
        assert run.num_outputs == 10 and run.output_mode == "probs"
        pool = load_pool(run)
        rows = list(iter_queries(session, run.id))
        images = np.stack([sent_image(run, pool, q.pool_index) for q in rows])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = torch.softmax(model.eval()(x).double(), dim=1).numpy()
    got = np.array([q.answer["probabilities"] for q in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)  # FP32 on the wire
    assert [q.label for q in rows] == expected.argmax(1).tolist()


def test_cli_refuses_a_third_party_label_model_that_does_not_say_its_classes(
    kserve_server, tmp_path
):
    """A label output (INT64) without the victim service's `num_outputs` parameter cannot be
    turned into a transfer set: the knockoff's width is unknown. One line, and no transfer set
    begun."""
    db = tmp_path / "label.sqlite"
    result = CliRunner().invoke(
        cli,
        ["query", "--url", kserve_server, "--protocol", "v2", "--model", "stolen-label",
         "--pool", "noise", "--pool-size", "64", "--pool-image-size", "32", "--budget", "8",
         "--db", str(db)],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "model 'stolen-label' cannot be queried as an image classifier" in result.output
    assert "its label output does not say how many classes there are" in result.output
    assert "Traceback" not in result.output
    assert not db.exists()  # no transfer set is begun
