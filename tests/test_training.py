import subprocess
import sys

import torch

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
    same = augment(x, 0, False, torch.Generator().manual_seed(1))
    assert torch.equal(same, x)


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
