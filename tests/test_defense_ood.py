"""The OOD filter on small embedded data: digits in, natural images out."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from defense.baselines import KNN, Mahalanobis, energy, msp, odin
from defense.evaluate import detection_metrics, evaluate_ood, ood_markdown
from defense.features import parse_spec
from defense.ood import OODFilter, fit_logistic, threshold_for_tnr, train_ood
from shared.errors import TestbedError
from tests.servers import ROOT

OUT_SIZE = 1000


@pytest.fixture(scope="module")
def trained(victim_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("ood") / "ood.pt"
    report = train_ood(
        "digits", "natural", f"victim:{victim_checkpoint}", out,
        out_size=OUT_SIZE, target_tnr=0.95, folds=10, progress=False,
    )  # fmt: skip
    return report


def test_filter_reaches_tpr_and_tnr_of_90_percent_on_unseen_data(trained, victim_checkpoint):
    meta = trained.filter.meta
    assert meta["logistic"]["folds"] == 10 and meta["backbone"].startswith("victim:")
    assert trained.heldout_tnr >= 0.9 and trained.heldout_tpr >= 0.9
    result = evaluate_ood(
        trained.path, victim_checkpoint, "digits", "natural",
        attack_limit=400, attack_split="test", progress=False,
    )  # fmt: skip
    assert result["tpr"] >= 0.9 and result["tnr"] >= 0.9, result
    assert result["auroc"] >= 0.95
    for name in ("msp", "odin", "mahalanobis", "energy", "knn"):
        for key in ("tpr", "tnr", "auroc", "fpr_at_95_tpr", "tpr_at_tnr_95"):
            assert 0.0 <= result["baselines"][name][key] <= 1.0
        # each baseline separates natural photographs from digits better than chance
        # matched TNR: each baseline's threshold is set to pass as many benign images
        assert abs(result["baselines"][name]["tnr"] - result["tnr"]) < 0.02
    # the feature-space detectors see the shift from digits to photographs; the logit-based ones
    # barely do (the victim is confidently wrong on photographs), and the filter beats them all
    aurocs = {name: b["auroc"] for name, b in result["baselines"].items()}
    assert aurocs["mahalanobis"] > 0.8 and aurocs["knn"] > 0.8, aurocs
    assert result["auroc"] > max(aurocs.values()), aurocs
    json.dumps(result)  # data first: everything serializable
    table = ood_markdown(result)
    assert "| none | " in table and "| **worst** |" in table and "| none | kNN |" in table


def test_artefact_is_self_contained_and_loads_weights_only(trained, tmp_path):
    payload = torch.load(trained.path, weights_only=True)
    assert payload["backbone"]["state_dict"] and payload["meta"]["in_dataset"] == "digits"
    loaded = OODFilter.load(trained.path)
    x = torch.rand(5, 3, 32, 32)
    assert np.allclose(loaded.score_images(x), trained.filter.score_images(x))
    assert loaded.threshold == trained.filter.threshold
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something else"}, bad)
    with pytest.raises(TestbedError, match="not an OOD detector"):
        OODFilter.load(bad)
    with pytest.raises(TestbedError, match="does not exist"):
        OODFilter.load(tmp_path / "missing.pt")
    payload["threshold"] += 1.0  # well-formed but altered: refused by its recorded sha256
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(TestbedError, match="does not match the sha256"):
        OODFilter.load(tmp_path / "tampered.pt")
    payload = torch.load(trained.path, weights_only=True)
    del payload["sha256"]  # as saved before the digest existed: still loads
    torch.save(payload, tmp_path / "legacy.pt")
    legacy = OODFilter.load(tmp_path / "legacy.pt")
    assert legacy.threshold == trained.filter.threshold
    assert np.allclose(legacy.score_images(x), trained.filter.score_images(x))


def test_scratch_backbone_trains_on_the_binary_task(tmp_path):
    report = train_ood(
        "digits", "natural", "scratch:cnn5", tmp_path / "s.pt",
        out_size=400, scratch_epochs=1, folds=3, progress=False,
    )  # fmt: skip
    assert report.heldout_tnr >= 0.9 and report.heldout_tpr >= 0.9
    assert OODFilter.load(report.path).backbone.spec == "scratch:cnn5"


def test_threshold_and_metrics_on_known_scores():
    in_scores = np.linspace(0, 1, 101)
    t = threshold_for_tnr(in_scores, 0.95)
    assert np.mean(in_scores <= t) >= 0.95 and np.mean(in_scores < t) < 0.95
    m = detection_metrics(np.zeros(50), np.ones(50), threshold=0.5)
    assert m["tpr"] == 1 and m["tnr"] == 1 and m["auroc"] == 1 and m["fpr_at_95_tpr"] == 0


def test_backbone_specs_are_checked():
    assert parse_spec("victim:runs/v.pt") == ("victim", "runs/v.pt")
    for bad in ("resnet18", "imagenet:resnet18", "scratch:"):
        with pytest.raises(TestbedError, match="not understood"):
            parse_spec(bad)


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "defense.cli", "train-ood", "--in-dataset", "digits",
         "--out-dataset", "natural", "--backbone", "imagenet-resnet",
         "--out", str(tmp_path / "o.pt"), "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "is not understood" in result.stderr and "Traceback" not in result.stderr
    from typer.testing import CliRunner

    from defense.cli import app

    base = ["train-ood", "--in-dataset", "digits", "--out-dataset", "natural", "--backbone",
            "scratch:cnn5", "--out", str(tmp_path / "o.pt")]  # fmt: skip
    for option, value in (("--holdout", "2"), ("--folds", "1")):  # a ZeroDivision, sklearn's
        result = CliRunner().invoke(app, [*base, option, value])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert f"Invalid value for '{option}'" in result.output, result.output


def test_unknown_datasets_are_refused_before_any_image_is_read(tmp_path, monkeypatch):
    import defense.ood
    from shared.errors import TestbedError

    def read(*args, **kwargs):
        raise AssertionError("a dataset was read before the names were checked")

    monkeypatch.setattr(defense.ood, "load_dataset", read)
    for given in ({"in_dataset": "nope"}, {"out_dataset": "nope"}):
        names = {"in_dataset": "digits", "out_dataset": "natural", **given}
        with pytest.raises(TestbedError, match="unknown dataset 'nope'"):
            defense.ood.train_ood(**names, backbone="defender:cnn5", out=tmp_path / "o.pt")
    (tmp_path / "a-file").write_text("")  # an artefact that cannot be written: before, too
    with pytest.raises(TestbedError, match="cannot write the OOD detector .*a-file/o.pt"):
        defense.ood.train_ood(
            "digits", "natural", "defender:cnn5", out=tmp_path / "a-file" / "o.pt"
        )


def test_torchvision_backbone_from_the_hub_cache_is_stored_in_the_artefact(tmp_path, monkeypatch):
    """The paper's backbone. No internet here: a stand-in weights file (random init) is put
    where torchvision's weights API looks first, so the offline path is the real one."""
    from pathlib import Path

    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # this test's own hub cache
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet18().state_dict(), hub / Path(weights.url).name)
    report = train_ood(
        "digits", "natural", "torchvision:resnet18", tmp_path / "tv.pt",
        out_size=300, folds=3, torchvision_size=32, progress=False,
    )  # fmt: skip
    loaded = OODFilter.load(report.path)
    assert loaded.backbone.spec == "torchvision:resnet18" and loaded.backbone.input_size == 32
    x = torch.rand(3, 3, 32, 32)
    assert np.allclose(loaded.score_images(x), report.filter.score_images(x))


def test_encoding_augmented_filter_keeps_its_tpr_under_jpeg_50(trained, victim_checkpoint):
    """Trained with random encodings, the filter scores what an image shows: re-encoding the
    attacker's queries as JPEG q50 moves its TPR by at most 0.1 (TNR stays too)."""
    assert trained.filter.meta["encodings"] is True
    result = evaluate_ood(
        trained.path, victim_checkpoint, "digits", "natural", transforms=["none", "jpeg:50"],
        attack_limit=400, attack_split="test", baselines=False, progress=False,
    )  # fmt: skip
    none, jpeg = result["per_transform"]["none"], result["per_transform"]["jpeg:50"]
    assert none["tpr"] >= 0.9 and abs(none["tpr"] - jpeg["tpr"]) <= 0.1, result
    # the TPR per attack-pool class brackets the overall TPR; kNN on the filter's features
    by_class = none["tpr_by_attack_class"]
    assert len(by_class) > 1 and min(by_class.values()) <= none["tpr"] <= max(by_class.values())
    assert 0.5 < none["filter_knn"]["auroc"] <= 1.0
    assert abs(none["filter_knn"]["tnr"] - none["tnr"]) < 0.02  # matched to the filter's TNR
    assert jpeg["tnr"] >= 0.85
    assert result["worst_tpr"] == min(none["tpr"], jpeg["tpr"])
    assert result["worst_tnr"] == min(none["tnr"], jpeg["tnr"])
    assert result["tpr"] == none["tpr"]  # the top-level keys keep their meaning: no transform
    assert "| **worst** |" in ood_markdown(result)


def test_defender_backbone_learns_both_label_sets_and_is_stored(tmp_path):
    report = train_ood(
        "digits", "natural", "defender:cnn5", tmp_path / "d.pt", out_size=400,
        pretrain_epochs=1, variants=1, folds=3, match_in=0.5, backbone_size=16, progress=False,
    )  # fmt: skip
    loaded = OODFilter.load(report.path)
    assert loaded.backbone.spec == "defender:cnn5"
    # trained and served at 16 px (the low-pass), fed the victim's 32 px by the service
    assert loaded.backbone.input_size == 16 and loaded.input_size == 32
    assert loaded.meta["backbone_size"] == 16 and loaded.meta["match_in"] == 0.5
    x = torch.rand(2, 3, 32, 32)
    assert np.allclose(loaded.score_images(x), report.filter.score_images(x))
    # 10 digit classes followed by the natural pool's own photo classes
    from shared.datasets import load_dataset

    n_out = len(load_dataset("natural", size=400).classes)
    assert loaded.backbone.model.num_classes == 10 + n_out
    assert report.heldout_tnr >= 0.9 and report.heldout_tpr >= 0.8


def test_knn_score_on_hand_made_features():
    """Sun et al.: minus the distance between normalized features and the k-th neighbour."""
    bank = np.eye(4, dtype=np.float32) * np.array([[1.0], [2.0], [3.0], [4.0]])  # norms vary
    knn = KNN.fit(bank, k=2)
    query = np.array([[5.0, 0, 0, 0], [1.0, 1.0, 0, 0]], dtype=np.float32)
    # e1: similarities (1, 0, 0, 0) -> 2nd nearest at cos 0 -> distance sqrt(2)
    # (e1+e2)/sqrt2: similarities (0.707, 0.707, 0, 0) -> distance sqrt(2 - sqrt2)
    expected = -np.sqrt([2.0, 2.0 - np.sqrt(2.0)])
    assert np.allclose(knn.score(query), expected, atol=1e-6)


def test_msp_energy_and_mahalanobis_scores_on_hand_made_numbers():
    """MSP (Hendrycks & Gimpel): max softmax; energy (Liu et al.): T logsumexp(z / T);
    Mahalanobis (Lee et al.): minus the smallest distance to a class mean under the tied
    covariance. softmax([2, 0, -1]) = [0.843795, 0.114195, 0.042010]; logsumexp = 2.169846."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    assert msp(logits) == pytest.approx([0.843795, 1 / 3], abs=1e-6)
    assert energy(logits) == pytest.approx([2.169846, np.log(3)], abs=1e-6)
    assert energy(logits, temperature=2.0) == pytest.approx([2.928738, 2 * np.log(3)], abs=1e-6)
    # class 0 around (0, 0), class 1 around (4, 0); tied covariance 0.5 I, so precision 2 I
    features = np.array([[-1.0, 0], [1, 0], [4, -1], [4, 1]])
    maha = Mahalanobis.fit(features, np.array([0, 0, 1, 1]))
    assert maha.means == pytest.approx(np.array([[0.0, 0], [4, 0]]))
    # (1, 1): 2 * (1 + 1) = 4 to class 0, 2 * (9 + 1) = 20 to class 1; (3, 0): 18 and 2
    assert maha.score(np.array([[1.0, 1], [3, 0]])) == pytest.approx([-4.0, -2.0], abs=1e-4)


def test_the_filters_regression_is_balanced_l2_logistic_regression_at_its_optimum():
    """Atli et al.'s head: L2 logistic regression (L-BFGS), C from k-fold CV over a grid. At
    the returned weights the gradient of C sum_i s_i logloss_i + |w|^2 / 2 vanishes with the
    balanced weights s_i = n / (2 n_class(i)); with s_i = 1 it would not."""
    rng = np.random.default_rng(0)
    x_in, x_out = rng.normal(size=(60, 2)), rng.normal(size=(40, 2)) + [1.5, 0.0]
    mean, scale, coef, intercept, info = fit_logistic(x_in, x_out, folds=5)
    assert info["cs"] == pytest.approx(np.logspace(-4, 2, 7)) and info["folds"] == 5
    assert info["C"] in info["cs"]
    x = (np.concatenate([x_in, x_out]) - mean) / scale
    y = np.r_[np.zeros(60), np.ones(40)]
    residual = 1 / (1 + np.exp(-(x @ coef + intercept))) - y
    balanced = np.where(y == 1, 100 / 80, 100 / 120)
    c = info["C"]
    assert np.abs(balanced * residual @ x + coef / c).max() < 0.02
    assert abs((balanced * residual).sum()) < 0.02
    assert abs(residual.sum()) > 1.0  # unweighted, the intercept's condition fails


def test_odin_steps_against_the_loss_of_the_predicted_class_then_tempers():
    """A linear model on 1-pixel images, logits (x_0, 0): at T = 1000 the predicted class is
    0, the loss's gradient is -(1 - p_0) / T along x_0, so the step adds epsilon to x_0 and
    the score is sigmoid((0.5 + epsilon) / T)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    x = torch.full((1, 3, 1, 1), 0.5)
    score = odin(model, x, temperature=1000.0, epsilon=0.0014)
    assert score == pytest.approx([1 / (1 + np.exp(-(0.5 + 0.0014) / 1000))], abs=1e-9)
    unstepped = odin(model, x, temperature=1000.0, epsilon=0.0)
    assert unstepped == pytest.approx([1 / (1 + np.exp(-0.5 / 1000))], abs=1e-9)


def test_evaluate_ood_rejects_an_unknown_transform_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "defense.cli", "evaluate-ood", "--detector",
         str(tmp_path / "missing.pt"), "--attack-transform", "none",
         "--attack-transform", "sepia:3", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "unknown attack transform 'sepia:3'" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_torchvision_backbone_from_a_local_weights_file(tmp_path):
    """`torchvision:<arch>:<file>`: the user's own copy of the weights, no hub, no internet.
    The stand-in file holds recognisable weights, so loading it (not a random init) shows."""
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.full_like(state["conv1.weight"], 0.01)
    weights = tmp_path / "my-resnet18.pth"
    torch.save(state, weights)
    report = train_ood(
        "digits", "natural", f"torchvision:resnet18:{weights}", tmp_path / "tv.pt",
        out_size=200, folds=3, torchvision_size=32, progress=False,
    )  # fmt: skip
    loaded = OODFilter.load(report.path)
    assert loaded.backbone.arch == "resnet18"
    conv = loaded.backbone.model.body.conv1.weight
    assert torch.allclose(conv, torch.full_like(conv, 0.01))
    with pytest.raises(TestbedError, match="does not exist"):
        train_ood(
            "digits", "natural", f"torchvision:resnet18:{tmp_path / 'nope.pth'}",
            tmp_path / "x.pt", out_size=50, progress=False,
        )  # fmt: skip


def test_the_served_filter_traces_its_backbone_and_scores_as_fitted(trained):
    """In the service the filter's backbone runs as a TorchScript trace on a CPU: same scores."""
    from defense.defenses.ood_filter import OODFilterStep

    eager = OODFilter.load(trained.path)
    traced = OODFilter.load(trained.path)
    assert traced.backbone.trace()
    x = torch.from_numpy(np.random.default_rng(0).random((21, 3, 32, 32), np.float32))
    assert np.allclose(traced.score_images(x), eager.score_images(x), rtol=0, atol=1e-5)
    assert OODFilterStep(traced).stateful is False  # the service may run it in every thread


def test_defender_backbone_is_a_function_of_its_seed():
    """Like the victim's: the initial weights come from the seed, not the process's history."""
    from defense.features import defender_backbone

    rng = np.random.default_rng(0)
    x_in, x_out = (rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8) for _ in range(2))
    y_in, y_out = rng.integers(0, 3, 40), rng.integers(0, 2, 40)
    states = []
    for run in range(2):
        torch.rand(run * 5 + 1)  # the process draws differently before each training
        backbone = defender_backbone(
            "cnn5", x_in, y_in, x_out, y_out, epochs=1, batch_size=16, progress=False
        )
        states.append(backbone.model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_encodings_and_features_of_older_code_are_not_reused_once_revised(
    victim_checkpoint, tmp_path, monkeypatch
):
    """Re-encoded images and backbone features are cached by their inputs (images, size, seed,
    weights); `defense.cache.REVISION` names the code, so a bump makes them again."""
    from defense import cache
    from defense.features import cached_features, victim_backbone
    from defense.ood import encoded

    monkeypatch.setenv("TESTBED_CACHE_DIR", str(tmp_path))
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    backbone = victim_backbone(victim_checkpoint)

    def cached() -> set[str]:
        return {p.name for p in tmp_path.rglob("*.npy")}

    first = encoded(images, 32, "four", seed=0, progress=False)
    cached_features(backbone, "four", images, progress=False)
    assert len(cached()) == 2
    np.testing.assert_array_equal(encoded(images, 32, "four", seed=0, progress=False), first)
    assert len(cached()) == 2  # read back, not made again
    monkeypatch.setattr(cache, "REVISION", cache.REVISION + 1)
    encoded(images, 32, "four", seed=0, progress=False)
    cached_features(backbone, "four", images, progress=False)
    assert len(cached()) == 4


def test_other_images_under_the_same_label_are_never_answered_from_the_cache(
    victim_checkpoint, tmp_path, monkeypatch
):
    """The label (`key`) names a dataset, which a replaced archive changes under the same name:
    before the images' digest entered the file names, the old images' features came back for
    the new ones when the count matched."""
    from defense.features import cached_features, embed_arrays, victim_backbone
    from defense.ood import encoded
    from shared.transforms import random_encodings

    monkeypatch.setenv("TESTBED_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    old, new = (rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8) for _ in range(2))
    backbone = victim_backbone(victim_checkpoint)
    encoded(old, 32, "cifar10-jpeg-train", seed=0, progress=False)
    cached_features(backbone, "cifar10-jpeg-train", old, progress=False)
    np.testing.assert_array_equal(
        encoded(new, 32, "cifar10-jpeg-train", seed=0, progress=False),
        random_encodings(new, 32, 0, False),
    )
    np.testing.assert_allclose(
        cached_features(backbone, "cifar10-jpeg-train", new, progress=False),
        embed_arrays(backbone, new, progress=False),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip
