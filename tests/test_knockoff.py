"""Knockoff losses, balancing, fresh models per budget, evaluation."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from attacker.evaluate import evaluate, save_outputs
from attacker.losses import answer_loss, hard_cross_entropy, soft_cross_entropy, topk_cross_entropy
from attacker.store import Query, Run, open_store
from attacker.train import KnockoffOptions, balance_indices, train_budgets, train_knockoff
from attacker.transfer import load_transfer_set
from defense.evaluate import default_configs, evaluate_utility
from shared.checkpoint import load_checkpoint
from shared.datasets import load_dataset
from shared.errors import TestbedError
from shared.imaging import encode_image
from shared.pipeline import Blackbox
from shared.schemas import parse_answer
from tests.servers import running_service
from victim_service.settings import VictimSettings

# --------------------------------------------------------------------------- losses


def test_soft_cross_entropy_on_a_hand_made_batch():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    expected = (math.log(2) + -math.log(0.75)) / 2
    assert soft_cross_entropy(logits, probs).item() == pytest.approx(expected)


def test_hard_cross_entropy_on_a_hand_made_batch():
    logits = torch.tensor([[math.log(3.0), 0.0, 0.0]])
    assert hard_cross_entropy(logits, torch.tensor([0])).item() == pytest.approx(-math.log(0.6))
    assert hard_cross_entropy(logits, torch.tensor([2])).item() == pytest.approx(-math.log(0.2))


def test_topk_loss_uses_only_what_was_disclosed():
    probs = torch.tensor([[0.7, 0.0, 0.0, 0.0]])
    known = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    uniform = torch.zeros(1, 4)
    expected = -0.7 * math.log(0.25) - 0.3 * math.log(0.75)
    assert topk_cross_entropy(uniform, probs, known).item() == pytest.approx(expected)
    # moving mass between undisclosed classes changes nothing: no probabilities are invented
    a = torch.tensor([[1.0, math.log(3.0), 0.0, 0.0]])  # unknown classes' weights 3 + 1 + 1
    b = torch.tensor([[1.0, 0.0, math.log(2.0), math.log(2.0)]])  # 1 + 2 + 2: the same total
    assert topk_cross_entropy(a, probs, known).item() == pytest.approx(
        topk_cross_entropy(b, probs, known).item(), abs=1e-5
    )


def test_topk_loss_with_everything_known_is_the_soft_loss_and_has_finite_gradients():
    logits = torch.randn(5, 6, requires_grad=True)
    probs = torch.softmax(torch.randn(5, 6), 1)
    full = topk_cross_entropy(logits, probs, torch.ones(5, 6))
    assert full.item() == pytest.approx(soft_cross_entropy(logits, probs).item(), rel=1e-6)
    full.backward()
    assert torch.isfinite(logits.grad).all()


def test_answer_targets_pack_into_the_loss_per_mode():
    target, known = parse_answer({"label": 3}, 4).target()
    y = torch.from_numpy(np.stack([target, known]).astype(np.float32))[None]
    assert answer_loss("label")(torch.zeros(1, 4), y).item() == pytest.approx(math.log(4))
    target, known = parse_answer({"top_k": [{"index": 0, "probability": 0.7}]}, 4).target()
    y = torch.from_numpy(np.stack([target, known]).astype(np.float32))[None]
    expected = -0.7 * math.log(0.25) - 0.3 * math.log(0.75)
    assert answer_loss("topk")(torch.zeros(1, 4), y).item() == pytest.approx(expected)


# --------------------------------------------------------------------------- balancing


def test_balancing_gives_every_stolen_class_the_same_count():
    labels = np.array([0] * 50 + [1] * 5 + [2] * 20)
    chosen = balance_indices(labels, seed=1)
    counts = np.bincount(labels[chosen])
    assert list(counts) == [25, 25, 25]
    assert set(chosen[labels[chosen] == 1]) == set(range(50, 55))  # over-sampled: all kept
    assert len(set(chosen[labels[chosen] == 0])) == 25  # under-sampled without replacement
    assert list(np.bincount(labels[balance_indices(labels, seed=1, per_class=7)])) == [7, 7, 7]


# --------------------------------------------------------------------------- budgets


@pytest.fixture(scope="module")
def transfer_db(tmp_path_factory, victim_checkpoint):
    """A transfer set written through the store, answered by the victim in-process."""
    db = tmp_path_factory.mktemp("transfer") / "transfer.sqlite"
    model, card = load_checkpoint(victim_checkpoint)
    box = Blackbox(model, card.input_size, amp=False)
    pool = load_dataset("natural", size=400, image_size=32, seed=0)
    order = np.random.default_rng(0).permutation(len(pool))[:160]
    answers = box(pool.arrays(32, order))
    sessions = open_store(db)
    with sessions() as session:
        run = Run(victim_url="in-process", pool="natural", pool_size=400, pool_image_size=32,
                  strategy="random", budget=160, seed=0, batch_size=8, output_mode="probs",
                  num_outputs=10, input_size=32, params={})  # fmt: skip
        session.add(run)
        session.flush()
        for position, (index, answer) in enumerate(zip(order, answers, strict=True)):
            digest = hashlib.sha256(encode_image(pool.image(int(index)))).hexdigest()
            session.add(Query(run_id=run.id, position=position, pool_index=int(index),
                              reference=f"natural#{index}", sha256=digest,
                              answer=answer.to_wire(), label=answer.label,
                              latency_ms=0.0))  # fmt: skip
        session.commit()
    return db


def test_each_budget_trains_a_fresh_model(transfer_db, tmp_path):
    options = KnockoffOptions(arch="cnn5", epochs=2, batch_size=32, progress=False, amp=False)
    together = train_budgets(transfer_db, [60, 160], options, tmp_path / "a.pt")
    alone = train_budgets(transfer_db, [160], options, tmp_path / "b.pt")
    assert [r.budget for r in together] == [60, 160]
    after_other, _ = load_checkpoint(together[1].checkpoint)
    fresh, _ = load_checkpoint(alone[0].checkpoint)
    small, _ = load_checkpoint(together[0].checkpoint)
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, after_other.state_dict()[name]), name
    assert any(not torch.equal(t, small.state_dict()[n]) for n, t in fresh.state_dict().items())
    assert load_transfer_set(transfer_db, budget=60).images.shape == (60, 3, 32, 32)


def test_the_same_answers_in_another_order_train_the_same_knockoff(transfer_db):
    """Two strategies that sent the same images (the whole pool) must differ by what they
    asked, not by which rows the seeded split and batches happened to pick."""

    asked = load_transfer_set(transfer_db, budget=120)
    shuffle = torch.from_numpy(np.random.default_rng(5).permutation(120))
    reordered = replace(asked, images=asked.images[shuffle], targets=asked.targets[shuffle],
                        labels=asked.labels[shuffle])  # fmt: skip
    options = KnockoffOptions(arch="cnn5", epochs=2, batch_size=32, progress=False, amp=False)
    first, a = train_knockoff(asked, options)
    second, b = train_knockoff(reordered, options)
    assert a.val_agreement == b.val_agreement and a.class_counts == b.class_counts
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    other, _ = train_knockoff(asked, replace(options, seed=1))  # the seed still draws the split
    assert any(not torch.equal(t, other.state_dict()[n]) for n, t in first.state_dict().items())


def test_content_order_follows_the_images_not_the_last_bits_of_the_answers(transfer_db):
    """The victim's answers for the same image move in the last float bits with the batch it
    was answered in, so the order must come from the images."""

    from attacker.train import content_order

    asked = load_transfer_set(transfer_db, budget=120)
    shuffle = torch.from_numpy(np.random.default_rng(3).permutation(120))
    noisy = asked.targets[shuffle] + 1e-7 * torch.rand_like(asked.targets[shuffle])
    reordered = replace(asked, images=asked.images[shuffle], targets=noisy)
    first = asked.images[torch.from_numpy(content_order(asked))]
    second = reordered.images[torch.from_numpy(content_order(reordered))]
    assert torch.equal(first, second)


def test_the_answers_digest_names_the_set_of_answers_not_their_order(transfer_db, tmp_path):
    from attacker.transfer import answers_digest

    def copy(name: str, reorder, change_first: bool = False):
        db = tmp_path / name
        source, target = open_store(transfer_db), open_store(db)
        with source() as s, target() as t:
            run = s.query(Run).first()
            rows = s.query(Query).order_by(Query.position).all()
            new_run = Run(**{c.name: getattr(run, c.name) for c in Run.__table__.columns
                             if c.name not in ("id",)})  # fmt: skip
            t.add(new_run)
            t.flush()
            for position, q in enumerate(reorder(rows)):
                answer = dict(q.answer)
                if change_first and position == 0:
                    answer = {**answer, "label": (q.label + 1) % 10}
                t.add(Query(run_id=new_run.id, position=position, pool_index=q.pool_index,
                            reference=q.reference, sha256=q.sha256, answer=answer,
                            label=q.label, latency_ms=0.0))  # fmt: skip
            t.commit()
        return db

    same = answers_digest(transfer_db)
    assert answers_digest(copy("reversed.sqlite", lambda r: r[::-1])) == same
    assert answers_digest(copy("changed.sqlite", lambda r: r, change_first=True)) != same
    assert answers_digest(transfer_db, budget=60) != same  # a prefix is another set


def test_min_steps_adds_epochs_to_small_transfer_sets_only(transfer_db, tmp_path):
    from attacker.train import epochs_for

    options = KnockoffOptions(epochs=20, batch_size=64, min_steps=1_400)
    assert epochs_for(4_500, options) == 20  # 71 steps an epoch: the epochs already suffice
    assert epochs_for(900, options) == 94  # 15 steps an epoch: 1,400 steps in 94 epochs
    assert epochs_for(900, KnockoffOptions(epochs=20, batch_size=64)) == 20  # off by default
    quick = KnockoffOptions(arch="cnn5", epochs=1, batch_size=32, min_steps=12, progress=False)
    _, result = train_knockoff(load_transfer_set(transfer_db, budget=60), quick, tmp_path / "k.pt")
    _, card = load_checkpoint(result.checkpoint)
    assert card.extra["epochs"] == 6  # 54 training images: 2 steps an epoch, 12 steps


def test_val_fraction_zero_trains_on_every_answer_and_keeps_the_last_epoch(transfer_db, tmp_path):
    """JBDA's substitutes learn every label (Papernot et al.): nothing held out, so no epoch
    can be chosen on held-out answers; a tenth held out is the default."""
    transfer = load_transfer_set(transfer_db, budget=60)
    every = KnockoffOptions(arch="cnn5", epochs=2, batch_size=32, val_fraction=0.0, keep="last",
                            progress=False, amp=False)  # fmt: skip
    _, result = train_knockoff(transfer, every, tmp_path / "k.pt")
    assert sum(result.class_counts.values()) == 60 and result.best_epoch == 2
    assert np.isnan(result.val_agreement)
    assert load_checkpoint(result.checkpoint)[1].extra["val_agreement"] is None
    _, split = train_knockoff(transfer, replace(every, val_fraction=0.1))
    assert sum(split.class_counts.values()) == 54 and 0 <= split.val_agreement <= 1
    with pytest.raises(TestbedError, match="keep=best needs held-out answers"):
        train_knockoff(transfer, replace(every, keep="best"))
    with pytest.raises(TestbedError, match=r"val_fraction must be in \[0, 1\)"):
        train_knockoff(transfer, replace(every, val_fraction=1.0))
    (tmp_path / "a-file").write_text("")  # refused before training, not after it
    with pytest.raises(TestbedError, match="cannot write the checkpoint .*a-file/k.pt"):
        train_knockoff(transfer, every, tmp_path / "a-file" / "k.pt")
    with pytest.raises(TestbedError, match="the epochs must be above 0, not 0"):
        train_knockoff(transfer, replace(every, epochs=0))


# --------------------------------------------------------------------------- evaluation


def test_a_knockoff_identical_to_the_victim_recovers_everything(victim_checkpoint, tmp_path):
    copy = tmp_path / "copy.pt"
    shutil.copy(victim_checkpoint, copy)
    result = evaluate(copy, victim_checkpoint, "digits", "test")
    assert result["recovery"] == pytest.approx(1.0) and result["agreement"] == 1.0
    assert result["knockoff_accuracy"] == result["victim_accuracy"] > 0.9
    assert result["knockoff_macro_accuracy"] == pytest.approx(result["victim_macro_accuracy"])
    confusion = np.asarray(result["confusion_victim_vs_knockoff"])
    assert confusion.sum() == result["images"] and confusion.trace() == result["images"]
    paths = save_outputs(result, tmp_path / "eval")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    assert json.loads(paths[0].read_text())["agreement"] == 1.0
    assert evaluate(copy, victim_checkpoint)["dataset"] == "digits"  # the victim's own


def test_a_victim_is_not_scored_on_a_dataset_of_other_classes(victim_checkpoint, tmp_path):
    """Found by a new user's walk through the README: a digits victim evaluated on CIFAR-10
    reported victim accuracy 0.064 without a word; and a URL does not say its dataset."""
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / "tree" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 90, 0, 0)).save(tmp_path / "tree" / c / f"{i}.png")
    copy = tmp_path / "copy.pt"
    shutil.copy(victim_checkpoint, copy)
    other = f"imagefolder:{tmp_path / 'tree'}"
    with pytest.raises(TestbedError, match="trained on digits .10 classes: 0, 1, 2, 3, ...., and"):
        evaluate(copy, victim_checkpoint, other)
    with pytest.raises(TestbedError, match="use --dataset digits"):
        evaluate_utility(victim_checkpoint, other, default_configs()[:1], progress=False)
    with pytest.raises(TestbedError, match="a victim behind a URL does not say its dataset"):
        evaluate(copy, "http://127.0.0.1:9")
    # a tree's index prefixes pin the order, on either side; the order itself must match
    from shared.checkpoint import ModelCard, check_same_classes

    def card(classes: list[str]) -> ModelCard:
        return ModelCard("cnn5", len(classes), classes, 32, [0.5] * 3, [0.2] * 3, "tree", 0)

    check_same_classes(card(["cat", "dog"]), "halves", ["000-cat", "001-dog"])
    check_same_classes(card(["000-cat", "001-dog"]), "same tree", ["000-cat", "001-dog"])
    with pytest.raises(TestbedError, match="other classes"):
        check_same_classes(card(["cat", "dog"]), "swapped", ["dog", "cat"])


def test_evaluation_against_a_live_api(victim_checkpoint, tmp_path):
    copy = tmp_path / "copy.pt"
    shutil.copy(victim_checkpoint, copy)
    settings = VictimSettings(checkpoint=victim_checkpoint, output="label", amp=False)
    with running_service(settings) as url:
        result = evaluate(copy, url, "digits", "test")
    assert result["victim_source"] == "api"
    assert result["agreement"] == 1.0 and result["recovery"] == pytest.approx(1.0)


def test_an_untrained_knockoff_recovers_little(victim_checkpoint, tmp_path):
    from shared.checkpoint import save_checkpoint
    from shared.models import create_model

    _, card = load_checkpoint(victim_checkpoint)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "random.pt", create_model("cnn5", 10), card)
    result = evaluate(tmp_path / "random.pt", victim_checkpoint, "digits", "test")
    assert result["recovery"] < 0.5 and result["agreement"] < 0.5


# --------------------------------------------------------------------------- end to end


def test_train_command_with_budgets_writes_one_checkpoint_each_and_a_curve(
    transfer_db, victim_checkpoint, tmp_path
):
    from typer.testing import CliRunner

    from attacker.cli import app

    out = tmp_path / "k.pt"
    result = CliRunner().invoke(app, [
        "train", "--db", str(transfer_db), "--budgets", "60,160", "--epochs", "1",
        "--batch-size", "32", "--out", str(out), "--victim", str(victim_checkpoint),
        "--dataset", "digits",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "k-60.pt").exists() and (tmp_path / "k-160.pt").exists()
    points = json.loads((tmp_path / "k-budgets.json").read_text())
    assert [p["budget"] for p in points] == [60, 160]
    for point in points:  # each point is that budget's own knockoff, evaluated on test data
        again = evaluate(tmp_path / f"k-{point['budget']}.pt", victim_checkpoint, "digits", "test")
        assert point["agreement"] == pytest.approx(again["agreement"])
        assert point["recovery"] == pytest.approx(again["recovery"])
    assert (tmp_path / "k-budgets.png").stat().st_size > 0
    assert "recovery" in result.output


def test_train_command_keeps_the_last_epochs_weights_when_asked(transfer_db, tmp_path):
    from typer.testing import CliRunner

    from attacker.cli import app

    common = ["train", "--db", str(transfer_db), "--epochs", "3", "--batch-size", "32"]
    for keep in ("last", "best"):
        out = tmp_path / f"{keep}.pt"
        result = CliRunner().invoke(app, [*common, "--keep", keep, "--out", str(out)])
        assert result.exit_code == 0, result.output
        card = load_checkpoint(out)[1]
        assert card.extra["options"]["keep"] == keep
        if keep == "last":
            assert card.extra["best_epoch"] == card.extra["epochs"] == 3
    refused = CliRunner().invoke(app, [*common, "--keep", "first", "--out", str(tmp_path / "x")])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "keep must be one of best, last, not 'first'" in refused.output, refused.output
    for budgets in ("60,x", "0,60", ","):  # one line each, before any training
        refused = CliRunner().invoke(app, [*common, "--budgets", budgets])
        assert refused.exit_code == 2 and "Traceback" not in refused.output
        assert f"--budgets: expected comma-separated positive integers, got {budgets!r}" in (
            refused.output
        )
