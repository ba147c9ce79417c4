import urllib.error

import pytest
import torch

from shared.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from shared.errors import TestbedError, UnknownNameError
from shared.models import arch_names, create_model


@pytest.mark.parametrize("arch", arch_names())
def test_every_architecture_builds_with_the_asked_number_of_classes(arch):
    model = create_model(arch, 7).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        features = model.features(x)
    assert logits.shape == (2, 7)
    assert features.shape[0] == 2 and features.shape[1] == model.head.in_features
    assert torch.isfinite(logits).all()


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(UnknownNameError, match="unknown architecture 'resnet1000'.*cnn5"):
        create_model("resnet1000", 10)


def test_imagenet_weights_offline_give_a_clear_error(monkeypatch, tmp_path):
    """No network here: simulate the failed fetch that torchvision's weights API would see."""
    import torchvision.models._api as weights_api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    monkeypatch.setattr(weights_api, "load_state_dict_from_url", offline)
    with pytest.raises(TestbedError, match="could not load ImageNet weights for resnet18"):
        create_model("resnet18", 10, weights="imagenet")
    with pytest.raises(TestbedError, match="no ImageNet weights"):
        create_model("cnn9", 10, weights="imagenet")


def test_local_weights_file_loads_torchvision_state_dict(tmp_path):
    import torchvision

    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = create_model("resnet18", 4, weights=tmp_path / "r18.pth")
    assert torch.equal(model.body.conv1.weight, source.conv1.weight)
    assert model.head.out_features == 4
    with pytest.raises(TestbedError, match="does not exist"):
        create_model("resnet18", 4, weights=tmp_path / "missing.pth")


def _card(**kw) -> ModelCard:
    base = dict(arch="cnn5", num_classes=3, classes=["a", "b", "c"], input_size=32,
                mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5], dataset="digits", seed=7,
                test_accuracy=0.5, extra={"epochs": 1})  # fmt: skip
    return ModelCard(**{**base, **kw})


def test_checkpoint_round_trip_restores_model_and_card(tmp_path):
    model = create_model("cnn5", 3, mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5]).eval()
    card = _card()
    path = save_checkpoint(tmp_path / "m.pt", model, card)
    loaded, loaded_card = load_checkpoint(path)
    assert loaded_card == card
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x))
    assert not loaded.training


def test_checkpoint_from_our_file_seeds_a_new_model_except_the_head(tmp_path):
    model = create_model("cnn5", 3)
    save_checkpoint(tmp_path / "m.pt", model, _card())
    new = create_model("cnn5", 10, weights=tmp_path / "m.pt")
    assert torch.equal(new.body[0][0].weight, model.body[0][0].weight)
    assert new.head.out_features == 10


def test_init_from_our_checkpoint_keeps_its_normalization(tmp_path):
    """Defect 5: the checkpoint's mean/std were replaced by ImageNet's."""
    model = create_model("cnn5", 3, mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5])
    save_checkpoint(tmp_path / "m.pt", model, _card())
    new = create_model("cnn5", 10, weights=tmp_path / "m.pt")
    assert new.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert new.std.flatten().tolist() == pytest.approx([0.5, 0.5, 0.5])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # same features as the checkpoint's model: nothing lost on the way
        assert torch.allclose(new.eval().features(x), model.eval().features(x))


def test_init_from_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    """Defect 5: strict=False loaded nothing (or crashed) when the architecture differed."""
    save_checkpoint(tmp_path / "m.pt", create_model("cnn5", 3), _card())
    with pytest.raises(TestbedError, match="cnn5.*cnn9"):
        create_model("cnn9", 10, weights=tmp_path / "m.pt")
    with pytest.raises(TestbedError, match="cnn5.*resnet18"):
        create_model("resnet18", 10, weights=tmp_path / "m.pt")


def test_init_from_a_checkpoint_whose_weights_do_not_fit_is_refused(tmp_path):
    """A card that names our architecture over weights of another (renamed or edited file)."""
    save_checkpoint(tmp_path / "m.pt", create_model("cnn9-wide", 3), _card(arch="cnn9"))
    with pytest.raises(TestbedError, match="does not fit cnn9"):
        create_model("cnn9", 10, weights=tmp_path / "m.pt")


def test_init_from_a_foreign_weights_file_that_does_not_fit_is_refused(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(TestbedError, match="does not fit resnet34"):
        create_model("resnet34", 4, weights=tmp_path / "r18.pth")
    with pytest.raises(TestbedError, match="cnn5"):  # was: silently loaded nothing
        create_model("cnn5", 4, weights=tmp_path / "r18.pth")


def test_victim_training_from_a_misfit_checkpoint_exits_2_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from victim_service.cli import app

    save_checkpoint(tmp_path / "m.pt", create_model("cnn5", 3), _card())
    result = CliRunner().invoke(
        app, ["train", "--arch", "cnn9", "--weights", str(tmp_path / "m.pt"), "--epochs", "1"]
    )
    assert result.exit_code == 2 and "cnn5" in result.output
    assert "Traceback" not in result.output


def test_loading_something_else_is_a_clear_error(tmp_path):
    import sqlite3

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TestbedError, match="junk.pt is not a checkpoint: torch.save writes a zip"):
        load_checkpoint(tmp_path / "junk.pt")
    with sqlite3.connect(tmp_path / "transfer.sqlite") as db:  # --checkpoint given a transfer set
        db.execute("CREATE TABLE runs (id INTEGER)")
    with pytest.raises(TestbedError, match="this file begins b'SQLite format 3"):
        load_checkpoint(tmp_path / "transfer.sqlite")
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x02garbage")  # torch's advice is left out
    with pytest.raises(TestbedError, match="not a readable checkpoint") as info:
        load_checkpoint(tmp_path / "pickle.pt")
    assert "weights_only` set to `False`" not in str(info.value)
    save_checkpoint(tmp_path / "whole.pt", create_model("cnn5", 3), _card())
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:5000])
    with pytest.raises(TestbedError, match="cut.pt is not a readable checkpoint .corrupt or trunc"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(TestbedError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(TestbedError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
