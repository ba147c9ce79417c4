"""The defenses inside the real service, over HTTP: each OOD action, and everything on at once."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest
import torch

from defense.defenses.ood_filter import OODFilterStep
from defense.ood import OODFilter, train_ood
from defense.registry import BuildContext, build_steps
from shared.checkpoint import load_checkpoint
from shared.datasets import load_dataset
from shared.imaging import encode_image
from shared.pipeline import Blackbox
from tests.servers import running_service, service_process
from victim_service.settings import VictimSettings


@pytest.fixture(scope="module")
def detector(victim_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("ood-service") / "ood.pt"
    report = train_ood(
        "digits", "natural", f"victim:{victim_checkpoint}", out,
        out_size=600, folds=3, target_tnr=0.99, progress=False,
    )  # fmt: skip
    return report.path


@pytest.fixture(scope="module")
def images():
    digits = load_dataset("digits", "test")
    natural = load_dataset("natural", "test", size=40, image_size=32, seed=1).arrays(32)
    return digits.arrays(32), digits.targets, natural


def post(url: str, arrays, client_key: str | None = None) -> httpx.Response:
    files = [("images", (f"{i}.png", encode_image(a), "image/png")) for i, a in enumerate(arrays)]
    headers = {"x-api-key": client_key} if client_key else {}
    return httpx.post(f"{url}/v1/predict", files=files, headers=headers, timeout=60)


def flagged_count(url: str, defense: str, api_key: str | None = None) -> float:
    headers = {"X-API-Key": api_key} if api_key else {}
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text  # a refusal must not read as "0 flagged"
    text = response.text
    match = re.search(rf'victim_flagged_queries_total{{defense="{defense}"}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def settings_for(checkpoint, **kwargs) -> VictimSettings:
    return VictimSettings(checkpoint=checkpoint, device="cpu", amp=False, **kwargs)


def test_shuffle_action_answers_ood_queries_with_a_permuted_vector(
    victim_checkpoint, detector, images
):
    digits, _, natural = images
    model, _ = load_checkpoint(victim_checkpoint)
    plain = Blackbox(model, 32).answer(natural[:8]).probs.numpy()
    with running_service(settings_for(victim_checkpoint, ood_detector=detector)) as url:
        response = post(url, np.concatenate([natural[:8], digits[:8]]))
        assert response.status_code == 200
        rows = [p["probabilities"] for p in response.json()["predictions"]]
        ood_rows = np.asarray(rows[:8])
        # each flagged answer holds the same values in another order: valid, plausible, wrong
        assert np.allclose(np.sort(ood_rows, axis=1), np.sort(plain, axis=1), atol=1e-9)
        assert not np.allclose(ood_rows, plain)
        assert flagged_count(url, "ood") >= 7
        again = post(url, natural[:8]).json()["predictions"]
        # same image, same permutation; the values move in the last float bits with the batch
        # the image was answered in (4e-9 on a bf16 CPU: a batch of 8 images, not of 16)
        assert np.allclose([p["probabilities"] for p in again], ood_rows, rtol=0, atol=1e-6)


def test_reject_action_refuses_ood_and_answers_in_distribution(victim_checkpoint, detector, images):
    digits, _, natural = images
    with running_service(
        settings_for(victim_checkpoint, ood_detector=detector, ood_action="reject")
    ) as url:
        refused = post(url, [digits[0], natural[0], natural[1]])
        assert refused.status_code == 403
        assert refused.json()["error"]["kind"] == "query_refused"
        ood = OODFilter.load(detector)  # the service's own decision, in-process
        x = torch.from_numpy(digits[:32]).permute(0, 3, 1, 2).float() / 255
        passed = ~ood.flag(ood.score_images(x))
        assert passed.sum() >= 16
        assert post(url, digits[:32][passed][:16]).status_code == 200
        assert flagged_count(url, "ood") >= 1


def test_label_action_gives_flagged_rows_the_label_only(victim_checkpoint, detector, images):
    digits, _, natural = images
    with running_service(
        settings_for(victim_checkpoint, ood_detector=detector, ood_action="label")
    ) as url:
        rows = post(url, [natural[0], natural[1], digits[0]]).json()["predictions"]
        assert set(rows[0]) == {"label"} or rows[0].get("probabilities") is None
        assert rows[1].get("probabilities") is None and rows[1]["label"] is not None
        assert rows[2]["probabilities"] is not None
        # the same images on /v2: its FP32 output has a vector for every row, so a row given the
        # label only comes back as that label's one-hot vector
        batch = np.stack([natural[0], natural[1], digits[0]])
        body = {"inputs": [{"name": "images", "shape": list(batch.shape), "datatype": "UINT8",
                            "data": batch.ravel().tolist()}]}  # fmt: skip
        answer = httpx.post(f"{url}/v2/models/victim/infer", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        vectors = np.asarray(output["data"], dtype=np.float64).reshape(3, -1)
        for row, vector in zip(rows[:2], vectors[:2], strict=True):
            assert vector.tolist() == np.eye(len(vector))[row["label"]].tolist()
        assert vectors[2] == pytest.approx(rows[2]["probabilities"], abs=1e-6)


def test_every_defense_on_by_env_still_serves_benign_clients(victim_checkpoint, detector, images):
    """OOD filter (shuffle), PRADA (reject), reverse sigmoid, noise and rounding, all from
    VICTIM_* variables; a benign client sends the digits test set and is never refused."""
    digits, targets, natural = images
    env = {
        "VICTIM_CHECKPOINT": str(victim_checkpoint),
        "VICTIM_DEVICE": "cpu",
        "VICTIM_AMP": "false",
        "VICTIM_OOD_DETECTOR": str(detector),
        "VICTIM_OOD_ACTION": "shuffle",
        "VICTIM_PRADA_THRESHOLD": "0.9",
        "VICTIM_PRADA_ACTION": "reject",
        "VICTIM_REVERSE_SIGMOID_BETA": "0.7",
        "VICTIM_REVERSE_SIGMOID_GAMMA": "0.5",
        "VICTIM_NOISE_STD": "0.05",
        "VICTIM_ROUND_DECIMALS": "3",
        "VICTIM_API_KEYS": "benign-key,other-key",
        "VICTIM_SEED": "3",
    }
    n = 240
    with service_process(env, ready_timeout=300) as (url, _):
        correct = 0
        for s in range(0, n, 16):
            response = post(url, digits[s : s + 16], "benign-key")
            assert response.status_code == 200, response.text
            rows = response.json()["predictions"]
            for row, target in zip(rows, targets[s : s + 16], strict=True):
                assert abs(sum(row["probabilities"]) - 1) < 0.01
                correct += int(np.argmax(row["probabilities"]) == target)
        assert correct / n >= 0.9
        assert flagged_count(url, "prada", "benign-key") == 0
        assert flagged_count(url, "ood", "benign-key") <= 0.1 * n
        # another client's OOD queries are flagged without touching the benign client
        assert post(url, natural[:8], "other-key").status_code == 200
        assert flagged_count(url, "ood", "benign-key") >= 7


def test_build_steps_order_feature_reuse_and_batch_correctness(victim_checkpoint, detector, images):
    digits, _, natural = images
    model, card = load_checkpoint(victim_checkpoint)
    settings = settings_for(
        victim_checkpoint, ood_detector=detector, prada_threshold=0.9,
        reverse_sigmoid_beta=0.5, noise_std=0.1,
    )  # fmt: skip
    steps = build_steps(settings.defenses, BuildContext(model, card, torch.device("cpu")))
    assert [s.name for s in steps] == ["ood", "prada", "reverse_sigmoid", "noise"]
    assert steps[0].reuse_features  # built on this victim: no second forward pass
    batch = Blackbox(model, 32).answer(np.concatenate([natural[:6], digits[:6]]))
    computed = OODFilterStep(steps[0].filter, reuse_features=False)
    whole = computed(batch)
    assert torch.equal(steps[0](batch).flags["ood"], whole.flags["ood"])
    for i in range(len(batch)):
        one = batch.replace(
            inputs=batch.inputs[i : i + 1], features=batch.features[i : i + 1],
            logits=batch.logits[i : i + 1], probs=batch.probs[i : i + 1],
            clients=batch.clients[i : i + 1],
        )  # fmt: skip
        alone = computed(one)
        assert alone.flags["ood"][0] == whole.flags["ood"][i]
        assert torch.equal(alone.probs[0], whole.probs[i])


def test_served_ood_scores_are_the_float32_scores_the_filter_was_fitted_on(
    victim_checkpoint, detector, images
):
    """The service runs the victim under bf16 autocast where the CPU has it; the filter was
    fitted on float32 features, and those are the features it must score."""
    from shared.device import bf16_supported
    from victim_service.app import load_blackbox

    if not bf16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no bf16 autocast: the service runs in float32 anyway")
    digits, _, natural = images
    blackbox = load_blackbox(
        VictimSettings(checkpoint=victim_checkpoint, device="cpu", amp=True, ood_detector=detector)
    )
    step = blackbox.steps[0]
    scored = []
    original = step.filter.score_features
    step.filter.score_features = lambda f: scored.append(original(f)) or scored[-1]
    x = np.concatenate([natural[:16], digits[:16]])
    batch = blackbox.answer(x)  # the step scores during the pipeline
    served = scored[-1]
    fitted = OODFilter.load(detector)  # float32 features, as in training
    expected = fitted.score_images(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
    assert np.allclose(served, expected, rtol=0, atol=1e-6)
    # the bf16 features of the batch itself would have scored differently
    assert np.abs(original(batch.features) - expected).max() > 1e-4
