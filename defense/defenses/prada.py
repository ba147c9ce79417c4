"""PRADA (Juuti et al., EuroS&P 2019): a stateful detector of extraction query streams, per client.

Algorithm 1 of the paper, with the choices of its reference implementation (as ported in
github.com/LKNSI/node-prada, `gs.js`):

- for a query x of predicted class c: if the growing set G_c is empty, x starts it (G_c = {x},
  DG_c = {0}, T_c = 0) and gives no distance. Otherwise d = min L2 distance from x to G_c joins
  the distance set D_c; if d > T_c, x joins G_c, d joins DG_c and
  T_c = max(T_c, mean(DG_c) - std(DG_c)): the class threshold never goes down.
- every `test_every` (10) queries of the client: pool the D_c of the classes holding at least
  `min_class_distances` (10) distances, drop the distances further than 3 standard deviations
  from their mean, and once more than `min_queries` (100) remain, compare the Shapiro-Wilk W
  with the threshold delta: W < delta raises the alarm. Like the reference, the verdict is
  re-taken at every test (it is not latched); between tests the last verdict holds.

Where the port and the paper differ, the paper wins: the port updates T_c from DG_c *before*
appending d (one step behind, a slip of the port); the paper's Algorithm 1 appends first. The
port's `queriesProcessed` counter only moves inside its own test, so as written it tests once;
its evident intent, a test every 10 queries, is what runs here. Distances are L2 over pixels
in [0, 1] (exact: integer sums of squared uint8 differences).

Memory is bounded: G (all classes together) holds at most `history` images per client as uint8,
each D_c and DG_c keep their last `history` values, and at most `max_clients` clients are tracked
(the least recently seen is forgotten first). Rows are processed in batch order, so a batch of
N gives the same result as the same N queries one at a time.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from defense.perturbations import Action, apply_action
from defense.registry import BuildContext, DefenseSettings, register_defense
from shared.pipeline import AnswerBatch

THRESHOLD = 0.9
"""delta: the paper's Shapiro-Wilk threshold is set per dataset; about 0.9 in its experiments."""


class PradaSettings(DefenseSettings):
    """`VICTIM_PRADA_THRESHOLD` switches it on; the rest are the paper's and port's constants."""

    threshold: float | None = Field(
        None, gt=0, lt=1, description="Shapiro-Wilk delta: W below it raises the alarm"
    )
    min_queries: int = Field(100, ge=3, description="distances the test needs (more than)")
    test_every: int = Field(10, ge=1, description="queries of a client between two tests")
    min_class_distances: int = Field(10, ge=1, description="a class joins the test from here")
    history: int = Field(2000, ge=10, description="growing-set images and distances kept")
    action: Action = "reject"
    max_clients: int = Field(1000, ge=1, description="clients tracked (least recent forgotten)")

    sweeps: ClassVar = ({"threshold": THRESHOLD},)


@dataclass
class ClientState:
    """One client's growing sets (one ring buffer of images and classes) and distance sets."""

    history: int
    images: torch.Tensor | None = None
    classes: torch.Tensor | None = None
    size: int = 0
    cursor: int = 0
    thresholds: dict[int, float] = field(default_factory=dict)
    """T_c per class."""
    admitted: dict[int, deque] = field(default_factory=dict)
    """DG_c: the distances that admitted members into G_c (starting with 0)."""
    distances: dict[int, deque] = field(default_factory=dict)
    """D_c: every query's minimum distance, per class."""
    queries: int = 0
    alarm: bool = False
    last_w: float | None = None

    def add(self, x: torch.Tensor, label: int) -> None:
        """x joins G (the oldest member of any class leaves once `history` are held)."""
        if self.images is None or (self.size == len(self.images) < self.history):
            capacity = min(self.history, max(64, 2 * self.size))
            images = torch.empty((capacity, x.numel()), dtype=torch.uint8)
            classes = torch.full((capacity,), -1, dtype=torch.long)
            if self.images is not None and self.classes is not None:
                images[: self.size], classes[: self.size] = self.images, self.classes
            self.images, self.classes, self.cursor = images, classes, self.size
        assert self.classes is not None
        self.images[self.cursor] = x
        self.classes[self.cursor] = label
        self.cursor = (self.cursor + 1) % len(self.images)
        self.size = min(self.size + 1, len(self.images))

    def min_distance(self, x: torch.Tensor, label: int) -> float | None:
        """min L2 distance (pixels in [0, 1]) from x to G_label; None when G_label is empty."""
        if self.images is None or self.classes is None:
            return None
        same = (self.classes[: self.size] == label).nonzero().flatten()
        if len(same) == 0:
            return None
        diff = self.images[same].to(torch.int32) - x.to(torch.int32)
        squared = int(diff.pow_(2).sum(dim=1).min())
        return float(np.sqrt(squared)) / 255.0

    def pooled(self, min_class_distances: int) -> np.ndarray:
        """D of the classes with enough distances, outliers beyond 3 std removed."""
        parts = [np.fromiter(d, np.float64) for d in self.distances.values()]
        parts = [p for p in parts if len(p) >= min_class_distances]
        if not parts:
            return np.empty(0)
        d = np.concatenate(parts)
        return d[np.abs(d - d.mean()) < 3 * d.std()]


class PradaDetector:
    """The per-client state machine; `observe` takes one query and says if its client is alarmed."""

    def __init__(
        self,
        threshold: float = THRESHOLD,
        min_queries: int = 100,
        history: int = 2000,
        max_clients: int = 1000,
        test_every: int = 10,
        min_class_distances: int = 10,
    ) -> None:
        self.threshold, self.min_queries = threshold, min_queries
        self.history, self.max_clients = history, max_clients
        self.test_every, self.min_class_distances = test_every, min_class_distances
        self.clients: OrderedDict[str, ClientState] = OrderedDict()
        self._lock = threading.Lock()

    def state(self, client: str) -> ClientState:
        state = self.clients.get(client)
        if state is None:
            state = ClientState(self.history)
            self.clients[client] = state
            while len(self.clients) > self.max_clients:
                self.clients.popitem(last=False)
        else:
            self.clients.move_to_end(client)
        return state

    def observe(self, client: str, image: torch.Tensor, label: int) -> bool:
        """Update the client's record with one uint8 image (flattened) of class `label`."""
        with self._lock:
            state = self.state(client)
            state.queries += 1
            d = state.min_distance(image, label)
            if d is None:  # G_c empty: x starts it
                if label not in state.thresholds:
                    state.thresholds[label] = 0.0
                    state.admitted[label] = deque([0.0], maxlen=self.history)
                state.add(image, label)
            else:
                state.distances.setdefault(label, deque(maxlen=self.history)).append(d)
                if d > state.thresholds[label]:
                    state.add(image, label)
                    dg = state.admitted[label]
                    dg.append(d)
                    candidate = float(np.mean(dg) - np.std(dg))
                    state.thresholds[label] = max(state.thresholds[label], candidate)
            if state.queries % self.test_every == 0:
                kept = state.pooled(self.min_class_distances)
                if len(kept) > self.min_queries:
                    state.last_w = shapiro_w(kept)
                    state.alarm = state.last_w < self.threshold
            return state.alarm


def shapiro_w(distances: np.ndarray) -> float:
    """Shapiro-Wilk W of the distances; a constant record (all equal) counts as not normal."""
    from scipy.stats import shapiro  # scipy.stats is slow to import: only when a test runs

    if np.ptp(distances) <= 1e-12:
        return 0.0
    with warnings.catch_warnings():  # W is exact for any N; only its p-value warns past 5000
        warnings.simplefilter("ignore", UserWarning)
        return float(shapiro(distances).statistic)


@dataclass
class PradaStep:
    """Pipeline step: feed every row to the detector in order; act on alarmed clients' rows."""

    detector: PradaDetector
    action: str = "reject"
    seed: int = 0
    name: str = "prada"

    def __call__(self, batch: AnswerBatch) -> AnswerBatch:
        pixels = batch.inputs.mul(255).round_().clamp_(0, 255).to(torch.uint8).flatten(1)
        labels = batch.logits.argmax(dim=1).tolist()
        flagged = torch.tensor(
            [
                self.detector.observe(client, pixels[i], labels[i])
                for i, client in enumerate(batch.clients)
            ],
            dtype=torch.bool,
        )
        batch = batch.replace(flags={**batch.flags, self.name: flagged})
        return apply_action(batch, flagged, self.action, self.seed, self.name)


@register_defense("prada", settings=PradaSettings, switch="threshold", order=20)
def build(settings: PradaSettings, ctx: BuildContext) -> PradaStep:
    assert settings.threshold is not None
    detector = PradaDetector(
        settings.threshold, settings.min_queries, settings.history, settings.max_clients,
        settings.test_every, settings.min_class_distances,
    )  # fmt: skip
    return PradaStep(detector, settings.action, ctx.seed)
