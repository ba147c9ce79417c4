"""The one answer pipeline: logits -> softmax -> [defense steps] -> granularity.

Every step is a function of a whole batch that returns a new batch; rows never mix, so a batch
of one and a batch of a thousand give each image the same answer. The HTTP service and the
in-process `Blackbox` run exactly this code.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from shared.device import autocast
from shared.imaging import resize
from shared.models import Classifier
from shared.schemas import Answer, OutputMode
from shared.tracing import traced_features


@dataclass(frozen=True)
class AnswerBatch:
    """A batch on its way through the pipeline (CPU tensors, one row per image)."""

    inputs: torch.Tensor
    """The preprocessed images, float in [0, 1], (B, 3, S, S)."""
    features: torch.Tensor
    """The victim's penultimate features, (B, D)."""
    logits: torch.Tensor
    probs: torch.Tensor
    """float64 (B, C): each row a probability distribution."""
    clients: tuple[str, ...]
    flags: dict[str, torch.Tensor] = field(default_factory=dict)
    """defense name -> bool (B,): rows that defense flagged."""
    label_only: torch.Tensor | None = None
    rejected: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.probs.shape[0]

    def replace(self, **changes) -> AnswerBatch:
        return dataclasses.replace(self, **changes)

    def mask(self, name: str) -> torch.Tensor:
        existing = getattr(self, name)
        return torch.zeros(len(self), dtype=torch.bool) if existing is None else existing


class Step(Protocol):
    """A pipeline step: a function of a batch. `name` labels its flags and metrics.

    A step that keeps no state between batches may say so with `stateful = False`: the steps
    that lead the pipeline and say so then run in every model thread at once (an OOD filter's
    own forward pass); every other step runs one batch at a time.
    """

    name: str

    def __call__(self, batch: AnswerBatch) -> AnswerBatch: ...


def is_stateful(step: Step) -> bool:
    return bool(getattr(step, "stateful", True))


def round_probs(probs: torch.Tensor, decimals: int) -> torch.Tensor:
    return torch.round(probs, decimals=decimals)


@dataclass(frozen=True)
class Granularity:
    """What the API discloses of each row: the vector, the top-k, or the label."""

    mode: OutputMode = "probs"
    top_k: int = 5
    decimals: int | None = None

    def format(self, batch: AnswerBatch) -> list[Answer]:
        """Each row as the typed `Answer` the API discloses; `Answer.to_wire()` is its JSON.

        A row's label is what a client reads from the disclosed values (the first maximum of
        the rounded vector, the first top-k entry), so `parse_answer(a.to_wire())` gives `a`
        back; label-only rows carry the argmax of the unrounded probabilities.
        """
        probs = batch.probs
        if self.decimals is not None:
            probs = round_probs(probs, self.decimals)
        n_out = probs.shape[1]
        labels = batch.probs.argmax(dim=1).tolist()
        label_only = batch.mask("label_only").tolist()
        if self.mode == "label":
            return [Answer(n_out, lab) for lab in labels]
        if self.mode == "topk":
            k = min(self.top_k, n_out)
            # a stable sort breaks ties by index, like argmax, so top_k[0] is always the label
            values, indices = torch.sort(probs, dim=1, descending=True, stable=True)
            values, indices = values[:, :k], indices[:, :k]
            rows = [
                Answer(n_out, ix[0], top_k=tuple(zip(ix, vs, strict=True)))
                for ix, vs in zip(indices.tolist(), values.tolist(), strict=True)
            ]
        else:
            disclosed = probs.argmax(dim=1).tolist()
            rows = [
                Answer(n_out, lab, probabilities=tuple(p))
                for p, lab in zip(probs.tolist(), disclosed, strict=True)
            ]
        return [
            Answer(n_out, lab) if lo else row
            for row, lab, lo in zip(rows, labels, label_only, strict=True)
        ]

    def wire(self, batch: AnswerBatch) -> list[dict]:
        """The rows as `/v1/predict` JSON objects."""
        return [answer.to_wire() for answer in self.format(batch)]


class Blackbox:
    """The victim as a black box: images in, the pipeline's answers out; counts its queries."""

    def __init__(
        self,
        model: Classifier,
        input_size: int,
        steps: Sequence[Step] = (),
        granularity: Granularity | None = None,
        device: torch.device | str = "cpu",
        amp: bool = False,
        trace: bool = False,
    ) -> None:
        self.model = model.eval()
        self.input_size = input_size
        self.steps = list(steps)
        lead = next((i for i, step in enumerate(self.steps) if is_stateful(step)), len(steps))
        self._parallel_steps, self._serial_steps = self.steps[:lead], self.steps[lead:]
        self.granularity = granularity or Granularity()
        self.device = torch.device(device)
        self.amp = amp
        traced = traced_features(model, input_size, self.device, amp) if trace else None
        self.traced = traced is not None
        self._features = traced or model.features
        self.queries = 0
        self._lock = threading.Lock()

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Resize each (H, W, 3) uint8 image to the model's input size and stack them."""
        return np.stack([resize(img, self.input_size) for img in images])

    @torch.no_grad()
    def answer(self, images: np.ndarray, clients: Sequence[str] | None = None) -> AnswerBatch:
        """Run model and steps on a stacked (B, S, S, 3) batch of any size.

        uint8 pixels are scaled to [0, 1]; float32 arrays are taken as already in [0, 1] (the
        Open Inference Protocol's FP32 tensors), so no precision is lost on the way in.
        """
        n = len(images)
        clients = tuple(clients) if clients is not None else ("local",) * n
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        x = x.float().div_(255) if images.dtype == np.uint8 else x.float()
        xd = x.to(self.device).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            features = self._features(xd)
            logits = self.model.head(features)
        logits = logits.float().cpu()
        batch = AnswerBatch(
            inputs=x,
            features=features.float().cpu(),
            logits=logits,
            probs=torch.softmax(logits.double(), dim=1),
            clients=clients,
        )
        for step in self._parallel_steps:
            batch = step(batch)
        with self._lock:  # steps keep state (PRADA's history, seeded noise): one batch at a time
            for step in self._serial_steps:
                batch = step(batch)
            self.queries += n
        return batch

    def __call__(self, images: np.ndarray, clients: Sequence[str] | None = None) -> list[Answer]:
        return self.granularity.format(self.answer(images, clients))
