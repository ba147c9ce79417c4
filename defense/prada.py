"""PRADA (Juuti et al., 2019): a stateful detector of extraction query streams, per client.

For each client and each predicted class c it keeps a growing set G_c of earlier queries. A new
query x of class c gets d = min L2 distance (in input space) to G_c; d joins the client's
distance record D, and x joins G_c when d exceeds the class's threshold T_c (the running
mean - std of the distances that admitted earlier members), as in the paper's Algorithm 1.
Benign natural queries give roughly normally distributed distances; synthetic attack queries
(small perturbations of a few seeds) give a skewed record. Once D holds `min_queries` distances,
a Shapiro-Wilk test runs on it and W < `threshold` raises an alarm; from then on every query of
that client gets the configured action.

Memory is bounded: G (all classes together) holds at most `history` images per client as uint8,
D holds the last `history` distances, and at most `max_clients` clients are tracked (the least
recently seen is forgotten first). Rows are processed in batch order, so a batch of N gives the
same result as the same N queries one at a time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import shapiro

from defense.perturbations import apply_action
from shared.pipeline import AnswerBatch


@dataclass
class ClientState:
    """One client's growing set (ring buffer of images and their classes) and distances."""

    history: int
    images: torch.Tensor | None = None
    classes: torch.Tensor | None = None
    size: int = 0
    cursor: int = 0
    distances: deque = field(default_factory=deque)
    admitted: dict[int, list[float]] = field(default_factory=dict)
    """class -> distances that admitted a member into G_c (for T_c), bounded like D."""
    queries: int = 0
    alarm: bool = False
    last_w: float | None = None

    def add(self, x: torch.Tensor, label: int) -> None:
        if self.images is None:
            self.images = torch.empty((self.history, x.numel()), dtype=torch.uint8)
            self.classes = torch.full((self.history,), -1, dtype=torch.long)
        assert self.classes is not None
        self.images[self.cursor] = x
        self.classes[self.cursor] = label
        self.cursor = (self.cursor + 1) % self.history
        self.size = min(self.size + 1, self.history)

    def min_distance(self, x: torch.Tensor, label: int) -> float | None:
        if self.images is None or self.classes is None:
            return None
        same = (self.classes[: self.size] == label).nonzero().flatten()
        if len(same) == 0:
            return None
        members = self.images[same].float()
        return float(torch.cdist(x.float()[None], members).min()) / 255.0


class PradaDetector:
    """The per-client state machine; `observe` takes one query and says if its client is alarmed."""

    def __init__(
        self,
        threshold: float = 0.9,
        min_queries: int = 20,
        history: int = 2000,
        max_clients: int = 1000,
    ) -> None:
        self.threshold, self.min_queries = threshold, min_queries
        self.history, self.max_clients = history, max_clients
        self.clients: OrderedDict[str, ClientState] = OrderedDict()
        self._lock = threading.Lock()

    def state(self, client: str) -> ClientState:
        state = self.clients.get(client)
        if state is None:
            state = ClientState(self.history, distances=deque(maxlen=self.history))
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
            if d is None:
                state.add(image, label)
            else:
                state.distances.append(d)
                admitted = state.admitted.setdefault(label, [])
                t_c = float(np.mean(admitted) - np.std(admitted)) if admitted else 0.0
                if d > t_c:
                    state.add(image, label)
                    admitted.append(d)
                    del admitted[: -self.history]
            if not state.alarm and len(state.distances) >= self.min_queries:
                state.last_w = shapiro_w(np.fromiter(state.distances, dtype=np.float64))
                state.alarm = state.last_w < self.threshold
            return state.alarm


def shapiro_w(distances: np.ndarray) -> float:
    """Shapiro-Wilk W of the distances; a constant record (all equal) counts as not normal."""
    if np.ptp(distances) <= 1e-12:
        return 0.0
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
