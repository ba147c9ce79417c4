import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared.checkpoint import load_checkpoint
from shared.training import augment
from tests.servers import ROOT


def test_victim_training_reaches_90_percent_on_digits(victim_checkpoint):
    model, card = load_checkpoint(victim_checkpoint)
    assert card.test_accuracy >= 0.9
    assert card.dataset == "digits" and card.classes == [str(d) for d in range(10)]
    assert card.input_size == 32 and card.extra["best_epoch"] >= 1


def test_augment_keeps_shape_and_content_and_is_seeded():
    x = torch.rand(6, 3, 8, 8)
    a = augment(x, 2, True, torch.Generator().manual_seed(1))
    b = augment(x, 2, True, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, augment(x, 2, True, torch.Generator().manual_seed(2)))
    same = augment(x, 0, False, torch.Generator().manual_seed(1))
    assert torch.equal(same, x)


def test_augment_translates_each_image_by_its_own_offset_within_the_padding():
    """Defect 8: the old test passed if augmentation were the identity."""
    pad, n = 2, 64
    x = torch.rand(n, 3, 8, 8)
    out = augment(x, pad, False, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="reflect")
    offsets = set()
    for i in range(n):
        found = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                 if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])]  # fmt: skip
        assert len(found) == 1, f"image {i} is no crop of its padded self"
        offsets.add(found[0])
    assert len(offsets) >= 15  # of 25: offsets vary per image, not one shift for the batch
    assert sum(torch.equal(out[i], x[i]) for i in range(n)) < n // 4


def test_augment_mirrors_about_half_the_images_and_only_when_asked():
    n = 400
    x = torch.rand(n, 3, 6, 6)
    out = augment(x, 0, True, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(out[i], x[i].flip(2)) for i in range(n)]
    kept = [torch.equal(out[i], x[i]) for i in range(n)]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True))  # each one or the other
    assert 150 < sum(mirrored) < 250
    assert torch.equal(augment(x, 0, False, torch.Generator().manual_seed(0)), x)


def test_train_command_prints_accuracy_and_writes_checkpoint(tmp_path):
    out = tmp_path / "v.pt"
    result = subprocess.run(
        [sys.executable, "-m", "victim_service.cli", "train", "--dataset", "digits",
         "--arch", "cnn5", "--epochs", "3", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout and out.exists()


def test_train_command_unknown_names_exit_cleanly(tmp_path):
    for args, message in ((["--dataset", "nope"], "unknown dataset 'nope'"),
                          (["--arch", "nope"], "unknown architecture 'nope'")):  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "victim_service.cli", "train", "--epochs", "1",
             "--out", str(tmp_path / "x.pt"), *args],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2
        assert message in result.stderr and "Traceback" not in result.stderr


def test_unknown_names_are_refused_before_any_image_is_read(monkeypatch, tmp_path):
    """A typo in the architecture used to cost loading the whole dataset first (CIFAR-10's
    50,000 JPEGs); a user's tree that is not there is refused the same way."""
    import victim_service.train
    from shared.errors import TestbedError

    def read(*args, **kwargs):
        raise AssertionError("a dataset was read before the names were checked")

    monkeypatch.setattr(victim_service.train, "load_dataset", read)
    missing = f"imagefolder:{tmp_path / 'none'}"
    for dataset, arch, message in (("digits", "nope", "unknown architecture 'nope'"),
                                   ("nope", "cnn5", "unknown dataset 'nope'"),
                                   (missing, "cnn5", "does not exist")):  # fmt: skip
        with pytest.raises(TestbedError, match=message):
            victim_service.train.train_victim(dataset, arch, tmp_path / "v.pt")
    # found by a new user's walk through the README: 0 epochs wrote an untrained model (exit
    # 0), and an --out that cannot be written failed after the whole training, in a traceback
    (tmp_path / "a-file").write_text("")
    for kwargs, message in (({"epochs": 0}, "the epochs must be above 0, not 0"),
                            ({"lr": -0.1}, "the learning rate must be above 0, not -0.1"),
                            ({"out": tmp_path / "a-file" / "v.pt"},
                             "cannot write the checkpoint .*a-file/v.pt")):  # fmt: skip
        with pytest.raises(TestbedError, match=message):
            victim_service.train.train_victim(**{"dataset": "digits", "arch": "cnn5",
                                                 "out": tmp_path / "v.pt", **kwargs})  # fmt: skip


def test_train_command_takes_unset_options_from_the_datasets_recipe(tmp_path):
    """Defaults have one home (victim_service/recipes.py): the CLI and train_victim read it."""
    from PIL import Image
    from typer.testing import CliRunner

    from victim_service.cli import app
    from victim_service.recipes import GENERIC, RECIPES, recipe_for

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "tree" / c).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "tree" / c / f"{i}.png")
    out = tmp_path / "v.pt"
    result = CliRunner().invoke(
        app, ["train", "--dataset", f"imagefolder:{tmp_path / 'tree'}", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    card = load_checkpoint(out)[1]
    assert card.arch == GENERIC.arch and card.extra["epochs"] == GENERIC.epochs
    assert card.input_size == GENERIC.input_size
    assert recipe_for("cifar10-jpeg") == RECIPES["cifar10-jpeg"] != GENERIC
    assert recipe_for("cifar10-jpeg").arch == "cnn9"


def test_victim_training_is_a_function_of_its_seed(tmp_path):
    """The initial weights were drawn from whatever state the process's generator was in, so
    two fresh demo victims reached 0.980 and 0.996 and the demo's recovery moved by 0.06."""
    from victim_service.train import train_victim

    weights = []
    for run in range(2):
        torch.rand(run * 7 + 1)  # the process draws differently before each training
        result = train_victim("digits", "cnn5", tmp_path / f"v{run}.pt", epochs=1, progress=False)
        weights.append(load_checkpoint(result.checkpoint)[0].state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _fit_noise(keep_best: bool):
    """A cnn5 fitted for 6 epochs to random labels of random images, with a validation split:
    its validation accuracy wanders, so the best epoch is not the last."""
    from shared.models import create_model
    from shared.training import TrainConfig, accuracy, fit

    g = torch.Generator().manual_seed(3)  # validation accuracy 0.16, 0.31, 0.25, 0.12, 0.25, 0.25
    x = torch.randint(0, 256, (96, 3, 16, 16), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 4, (96,), generator=g)
    torch.manual_seed(0)
    model = create_model("cnn5", 4)
    config = TrainConfig(epochs=6, batch_size=16, lr=0.05, seed=0, amp=False, progress=False,
                         keep_best=keep_best)  # fmt: skip
    cpu = torch.device("cpu")
    result = fit(model, x[:64], y[:64], F.cross_entropy, config, cpu, x[64:], y[64:])
    return result, accuracy(model, x[64:], y[64:], cpu, amp=False)


def test_fit_keeps_the_best_epochs_weights_or_the_last_ones():
    best, kept = _fit_noise(keep_best=True)
    val = [record["val_accuracy"] for record in best.history]
    assert val.index(max(val)) + 1 == best.best_epoch < len(val)  # the first best, not the last
    assert best.best_val_accuracy == kept == max(val)
    last, kept = _fit_noise(keep_best=False)
    assert [record["val_accuracy"] for record in last.history] == val  # the same training
    assert last.best_epoch == 6 and last.best_val_accuracy == kept == val[-1] != max(val)
