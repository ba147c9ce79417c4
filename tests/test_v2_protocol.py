"""The Open Inference Protocol (KServe v2) routes, driven by Triton's own client (`tritonclient`).

Every test starts the real service on loopback and compares what /v2 answers with what /v1
answers for the same pixels: the two protocols must be one pipeline.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from benchmarks.common import throwaway_victim
from shared.datasets import load_dataset
from shared.imaging import encode_image, resize
from tests.servers import running_service
from victim_service.settings import VictimSettings


@pytest.fixture(scope="module")
def victim_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised 32x32 cnn5: the protocol does not depend on training."""
    return throwaway_victim(tmp_path_factory.mktemp("v2") / "victim.pt", arch="cnn5")


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """Six digits images at the victim's input size (so /v1's resize is the identity)."""
    ds = load_dataset("digits", "test")
    return np.stack([resize(ds.image(i), 32) for i in range(6)])


def _serve(checkpoint, **kwargs):
    return running_service(VictimSettings(checkpoint=checkpoint, amp=False, **kwargs))


def _client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=url.removeprefix("http://"))


def _v1(url: str, images: np.ndarray, headers: dict | None = None) -> httpx.Response:
    files = [("images", (f"{i}.png", encode_image(im), "image/png")) for i, im in enumerate(images)]
    return httpx.post(f"{url}/v1/predict", files=files, headers=headers or {})


def _uint8_input(images: np.ndarray, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    return tensor


@pytest.fixture(scope="module")
def probs_service(victim_checkpoint):
    with _serve(victim_checkpoint, model_name="digits-cnn", max_images=8) as url:
        yield url


def test_health_metadata_and_readiness_through_tritonclient(probs_service, pixels):
    client = _client(probs_service)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits-cnn")
    assert not client.is_model_ready("victim")  # VICTIM_MODEL_NAME renamed it
    meta = client.get_model_metadata("digits-cnn")
    size = pixels.shape[1]
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, size, size, 3]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["max_images_per_request"] == 8
    assert set(client.get_server_metadata()["extensions"]) >= {"binary_tensor_data"}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_uint8_nhwc_answers_what_v1_answers(probs_service, pixels, binary):
    expected = np.array(
        [p["probabilities"] for p in _v1(probs_service, pixels).json()["predictions"]]
    )
    requested = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = _client(probs_service).infer(
        "digits-cnn", [_uint8_input(pixels, binary)], outputs=[requested]
    )
    got = result.as_numpy("probabilities")
    assert got.dtype == np.float32 and got.shape == (len(pixels), 10)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_fp32_nchw_in_unit_range_answers_what_uint8_answers(probs_service, pixels):
    values = (pixels.transpose(0, 3, 1, 2) / 255).astype(np.float32)
    tensor = triton.InferInput("images", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values, binary_data=True)
    got = _client(probs_service).infer("digits-cnn", [tensor]).as_numpy("probabilities")
    reference = _client(probs_service).infer("digits-cnn", [_uint8_input(pixels)])
    np.testing.assert_allclose(got, reference.as_numpy("probabilities"), atol=1e-6)


def test_classification_extension_gives_the_top_k_of_the_vector(probs_service, pixels):
    vectors = [p["probabilities"] for p in _v1(probs_service, pixels).json()["predictions"]]
    requested = triton.InferRequestedOutput("probabilities", binary_data=True, class_count=3)
    result = _client(probs_service).infer("digits-cnn", [_uint8_input(pixels)], outputs=[requested])
    entries = result.as_numpy("probabilities")
    assert entries.shape == (len(pixels), 3)
    for row, vector in zip(entries, np.asarray(vectors), strict=True):
        pairs = [e.decode().split(":") for e in row]
        assert [int(i) for _, i in pairs] == list(np.argsort(-vector, kind="stable")[:3])
        np.testing.assert_allclose([float(v) for v, _ in pairs], np.sort(vector)[::-1][:3])


def test_refusals_come_in_the_protocols_error_shape(probs_service, pixels):
    client = _client(probs_service)
    with pytest.raises(InferenceServerException, match="unknown model 'victim'") as info:
        client.infer("victim", [_uint8_input(pixels)])
    assert info.value.status() == "404"
    wrong = pixels[:, :8, :8]
    with pytest.raises(InferenceServerException, match=r"shape \[N, \d+, \d+, 3\]"):
        client.infer("digits-cnn", [_uint8_input(np.ascontiguousarray(wrong))])
    with pytest.raises(InferenceServerException, match="limit is 8"):
        client.infer("digits-cnn", [_uint8_input(np.concatenate([pixels, pixels]))])
    outside = np.full((1, 3, pixels.shape[1], pixels.shape[1]), 2.0, dtype=np.float32)
    tensor = triton.InferInput("images", list(outside.shape), "FP32")
    tensor.set_data_from_numpy(outside)
    with pytest.raises(InferenceServerException, match=r"in \[0, 1\]"):
        client.infer("digits-cnn", [tensor])
    # raw HTTP: a body that lies about its binary part, a wrong input name, bad JSON
    url = f"{probs_service}/v2/models/digits-cnn/infer"
    header = b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], '
    header += b'"parameters": {"binary_data_size": 3072}}]}'
    short = httpx.post(
        url,
        content=header + b"\0" * 100,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert short.status_code == 400 and "binary bytes" in short.json()["error"]
    named = httpx.post(url, json={"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1]}]})
    assert named.status_code == 400 and "one input named 'images'" in named.json()["error"]
    garbage = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert garbage.status_code == 400 and isinstance(garbage.json()["error"], str)


def test_topk_mode_discloses_only_k_entries(victim_checkpoint, pixels):
    with _serve(victim_checkpoint, output="topk", top_k=2) as url:
        client = _client(url)
        meta = client.get_model_metadata("victim")
        assert meta["outputs"] == [{"name": "probabilities", "datatype": "BYTES", "shape": [-1, 2]}]
        default = client.infer("victim", [_uint8_input(pixels)]).as_numpy("probabilities")
        assert default.shape == (len(pixels), 2)
        v1 = _v1(url, pixels).json()["predictions"]
        for row, answer in zip(default, v1, strict=True):
            indices = [int(e.decode().split(":")[1]) for e in row]
            assert indices == [e["index"] for e in answer["top_k"]]
        wider = triton.InferRequestedOutput("probabilities", class_count=5)
        with pytest.raises(InferenceServerException, match="top 2 classes only"):
            client.infer("victim", [_uint8_input(pixels)], outputs=[wider])
        plain = httpx.post(
            f"{url}/v2/models/victim/infer",
            json={
                "inputs": [
                    {"name": "images", "datatype": "UINT8", "shape": list(pixels[:1].shape),
                     "data": pixels[:1].reshape(-1).tolist()}
                ]
            },
        )  # fmt: skip
        assert plain.status_code == 200
        (output,) = plain.json()["outputs"]
        assert output["datatype"] == "BYTES" and output["shape"] == [1, 2]


def test_label_mode_answers_int64_labels_and_withholds_scores(victim_checkpoint, pixels):
    with _serve(victim_checkpoint, output="label") as url:
        client = _client(url)
        labels = client.infer("victim", [_uint8_input(pixels)]).as_numpy("label")
        assert labels.dtype == np.int64 and labels.shape == (len(pixels), 1)
        assert labels[:, 0].tolist() == [p["label"] for p in _v1(url, pixels).json()["predictions"]]
        with pytest.raises(InferenceServerException, match="labels only"):
            client.infer(
                "victim",
                [_uint8_input(pixels)],
                outputs=[triton.InferRequestedOutput("label", class_count=1)],
            )


def test_keys_rate_limits_and_metrics_are_shared_with_v1(victim_checkpoint, pixels):
    with _serve(
        victim_checkpoint, api_keys=["k1"], rate_limit=0.01, rate_burst=8, max_images=8
    ) as url:
        client = _client(url)
        with pytest.raises(InferenceServerException) as missing:
            client.infer("victim", [_uint8_input(pixels)])
        assert missing.value.status() == "401"
        key = {"X-API-Key": "k1"}  # tritonclient adds to the dict it is given: pass copies
        assert _v1(url, pixels[:5], dict(key)).status_code == 200  # 5 of the 8 tokens
        client.infer("victim", [_uint8_input(pixels[:3])], headers=dict(key))  # the last 3
        with pytest.raises(InferenceServerException) as limited:
            client.infer("victim", [_uint8_input(pixels[:1])], headers=dict(key))
        assert limited.value.status() == "429"
        assert _v1(url, pixels[:1], dict(key)).status_code == 429  # one bucket for both
        assert httpx.get(f"{url}/metrics").status_code == 401  # keys on: /metrics too
        metrics = httpx.get(f"{url}/metrics", headers=dict(key)).text
        assert "victim_images_total 8.0" in metrics


def test_defenses_apply_to_v2_as_to_v1(victim_checkpoint, pixels):
    with _serve(victim_checkpoint, reverse_sigmoid_beta=0.5) as url:
        v1 = np.array([p["probabilities"] for p in _v1(url, pixels).json()["predictions"]])
        v2 = _client(url).infer("victim", [_uint8_input(pixels)]).as_numpy("probabilities")
    with _serve(victim_checkpoint) as url:
        plain = _client(url).infer("victim", [_uint8_input(pixels)]).as_numpy("probabilities")
    np.testing.assert_allclose(v2, v1, atol=1e-6)
    assert np.abs(v2 - plain).max() > 1e-3  # the perturbation did reach the v2 answer
    assert (v2.argmax(1) == plain.argmax(1)).all()  # and kept the label, as it should
