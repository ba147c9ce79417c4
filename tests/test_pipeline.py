"""The answer pipeline's contract, property-tested: valid outputs, sorted top-k, no mixed rows."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shared.checkpoint import load_checkpoint
from shared.pipeline import AnswerBatch, Blackbox, Granularity

logit_batches = st.integers(1, 12).flatmap(
    lambda c: arrays(
        np.float32, st.tuples(st.integers(1, 16), st.just(c)), elements=st.floats(-30, 30, width=32)
    )  # fmt: skip
)


def _batch(logits: np.ndarray, label_only: np.ndarray | None = None) -> AnswerBatch:
    t = torch.from_numpy(logits)
    n = len(t)
    return AnswerBatch(
        inputs=torch.zeros(n, 3, 2, 2),
        features=t,
        logits=t,
        probs=torch.softmax(t.double(), 1),
        clients=("c",) * n,
        label_only=None if label_only is None else torch.from_numpy(label_only),
    )


@settings(max_examples=60, deadline=None)
@given(logit_batches, st.integers(1, 15), st.sampled_from([None, 0, 2, 4]))
def test_every_mode_gives_valid_rows_in_order(logits, k, decimals):
    batch = _batch(logits)
    argmax = batch.probs.argmax(1).tolist()
    probs_rows = Granularity("probs", decimals=decimals).wire(batch)
    for row, expected in zip(probs_rows, batch.probs.tolist(), strict=True):
        p = np.asarray(row["probabilities"])
        assert len(p) == logits.shape[1] and (p >= 0).all()
        tol = 0.5 * logits.shape[1] * 10.0 ** -(decimals if decimals is not None else 9)
        assert abs(p.sum() - 1) <= tol + 1e-9
        if decimals is None:
            assert np.allclose(p, expected)
    top_rows = Granularity("topk", top_k=k).wire(batch)
    for row, top, best in zip(top_rows, argmax, batch.probs.max(1).values.tolist(), strict=True):
        entries = row["top_k"]
        assert len(entries) == min(k, logits.shape[1])
        values = [e["probability"] for e in entries]
        assert values == sorted(values, reverse=True)
        assert len({e["index"] for e in entries}) == len(entries)
        assert entries[0]["index"] == top
        assert entries[0]["probability"] == pytest.approx(best)
    labels = [r.label for r in Granularity("label").format(batch)]
    assert labels == argmax


@settings(max_examples=40, deadline=None)
@given(logit_batches, st.sampled_from(["probs", "topk", "label"]), st.data())
def test_batch_of_n_equals_n_batches_of_one(logits, mode, data):
    mask = np.asarray(
        data.draw(st.lists(st.booleans(), min_size=len(logits), max_size=len(logits)))
    )
    granularity = Granularity(mode, top_k=3)
    whole = granularity.wire(_batch(logits, mask))
    singles = [
        granularity.wire(_batch(logits[i : i + 1], mask[i : i + 1]))[0] for i in range(len(logits))
    ]
    assert whole == singles
    for row, label_only, top in zip(
        whole, mask, _batch(logits).probs.argmax(1).tolist(), strict=True
    ):
        if label_only:
            assert row == {"label": top}


def test_blackbox_answers_rows_independently_of_batch(victim_checkpoint):
    model, card = load_checkpoint(victim_checkpoint)
    box = Blackbox(model, card.input_size, granularity=Granularity("probs"), amp=False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    whole = box(images)
    singles = [box(images[i : i + 1])[0] for i in range(len(images))]
    for a, b in zip(whole, singles, strict=True):
        assert np.allclose(a.probabilities, b.probabilities, atol=1e-5)
    assert box.queries == 18


@pytest.mark.parametrize("arch,size", [("cnn9", 32), ("resnet18", 40)])
@pytest.mark.parametrize("amp", [False, True])
def test_the_traced_forward_pass_answers_as_the_eager_one(arch, size, amp):
    """The service serves a TorchScript trace on CPUs: same answers, any batch size."""
    from shared.models import create_model

    torch.manual_seed(0)
    model = create_model(arch, num_classes=7)
    eager = Blackbox(model, size, amp=amp)
    traced = Blackbox(model, size, amp=amp, trace=True)
    assert traced.traced and not eager.traced
    for n in (1, 5, 33):
        images = np.random.default_rng(n).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        a, b = eager.answer(images), traced.answer(images)
        assert torch.allclose(a.features, b.features, rtol=1e-3, atol=1e-4)
        assert torch.allclose(a.probs, b.probs, atol=1e-6)


def test_float32_traces_fold_batch_norm_into_the_convolutions():
    """Freezing folds the OOD filter's batch norms away in float32 (same features, checked
    inside `traced_features`); under bf16 autocast the trace keeps them, unfolded."""
    from shared.models import create_model
    from shared.tracing import traced_features

    model = create_model("cnn5", num_classes=7)
    cpu = torch.device("cpu")

    def kinds(trace) -> list[str]:
        return [node.kind() for node in trace.inlined_graph.nodes()]

    assert kinds(traced_features(model, 16, cpu, amp=False)).count("aten::batch_norm") == 0
    assert kinds(traced_features(model, 16, cpu, amp=True)).count("aten::batch_norm") == 3


def test_a_model_the_tracer_cannot_follow_is_served_eagerly():
    from shared.models import create_model

    model = create_model("cnn9", num_classes=3)
    original = type(model).features

    def data_dependent(self, x):  # a Python float of the data: a trace would bake in one value
        return original(self, x) * float(x.mean())

    type(model).features = data_dependent
    try:
        box = Blackbox(model, 32, trace=True)
        assert not box.traced
        bright = np.full((2, 32, 32, 3), 250, np.uint8)
        dark = np.full((2, 32, 32, 3), 5, np.uint8)
        plain = Blackbox(model, 32)
        for images in (bright, dark):
            assert torch.allclose(box.answer(images).probs, plain.answer(images).probs)
    finally:
        type(model).features = original


def test_leading_stateless_steps_run_in_every_model_thread_at_once():
    """The service's model threads share one Blackbox: a step that says `stateful = False` and
    leads the pipeline (the OOD filter) runs in both at once; the stateful ones stay serial."""
    import threading

    from shared.models import create_model

    inside = threading.Barrier(2, timeout=20)  # both threads must be in the step together
    active, most = [0], [0]
    count = threading.Lock()

    class Stateless:
        name, stateful = "free", False

        def __call__(self, batch):
            inside.wait()
            return batch

    class Stateful:
        name = "serial"

        def __call__(self, batch):
            with count:
                active[0] += 1
                most[0] = max(most[0], active[0])
            threading.Event().wait(0.2)
            with count:
                active[0] -= 1
            return batch

    box = Blackbox(create_model("cnn5", num_classes=3), 32, steps=[Stateless(), Stateful()])
    images = np.zeros((2, 32, 32, 3), np.uint8)
    errors: list[BaseException] = []

    def ask():
        try:
            box.answer(images)
        except BaseException as e:  # a broken barrier: the first step ran one thread at a time
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert most[0] == 1 and box.queries == 4
    # a stateful step first keeps every step behind it serial too (their order is the pipeline)
    box = Blackbox(create_model("cnn5", num_classes=3), 32, steps=[Stateful(), Stateless()])
    assert box._parallel_steps == [] and len(box._serial_steps) == 2
