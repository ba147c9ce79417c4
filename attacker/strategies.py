"""Which pool images to query, in which order: Knockoff Nets' random and adaptive strategies.

A strategy maps plan positions to pool indices. The orchestrator calls `select` with increasing
positions and feeds answers back through `observe` in position order, with a fixed delay for
strategies that learn (`feedback_window`, in batches). Everything random is seeded by
(seed, position), so replaying the stored answers of a killed run rebuilds the exact state and
the resumed run asks for the same images as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from attacker.store import answer_probabilities
from shared.errors import TestbedError, UnknownNameError
from shared.imaging import resize

STRATEGIES = ("random", "adaptive")


class Strategy(Protocol):
    """Chooses pool indices for plan positions; learns from answers if `needs_feedback`."""

    name: str
    needs_feedback: bool

    def select(self, start: int, count: int) -> list[int]:
        """Pool indices for positions start .. start + count - 1 (called in position order)."""
        ...

    def observe(
        self, start: int, indices: Sequence[int], images: np.ndarray, answers: Sequence[dict]
    ) -> None:
        """The victim's answers for those positions (called in position order)."""
        ...


class RandomStrategy:
    """Knockoff Nets' random: the first `budget` entries of a seeded permutation of the pool."""

    name = "random"
    needs_feedback = False

    def __init__(self, pool_size: int, budget: int, seed: int = 0) -> None:
        _check_budget(pool_size, budget)
        self.pool_size, self.budget, self.seed = pool_size, budget, seed
        self._plan: np.ndarray | None = None

    @property
    def plan(self) -> np.ndarray:
        """The whole query plan; position p queries pool index plan[p]."""
        if self._plan is None:
            rng = np.random.default_rng([self.seed, 0x52414E44])
            self._plan = rng.permutation(self.pool_size)[: self.budget]
        return self._plan

    def select(self, start: int, count: int) -> list[int]:
        return [int(i) for i in self.plan[start : start + count]]

    def observe(self, start: int, indices, images, answers) -> None:
        """Random sampling ignores the answers."""


@dataclass(frozen=True)
class AdaptiveConfig:
    """The gradient bandit's knobs (validated once, here)."""

    lr: float = 0.5
    """Step size of the preference updates."""
    reward_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Weights of (certainty, diversity, loss) after each is rescaled to [0, 1]."""
    diversity_decay: float = 0.98
    """Decay of the running mean answer that diversity is measured against."""
    preference_clip: float = 30.0
    """Preferences are kept in [-clip, 0] (max subtracted), so exp() never overflows."""
    knockoff_lr: float = 0.5
    knockoff_side: int = 8
    """The online knockoff reads images downsampled to side x side pixels."""

    def __post_init__(self) -> None:
        if not (self.lr > 0 and self.knockoff_lr > 0 and self.preference_clip > 0):
            raise TestbedError("adaptive: lr, knockoff_lr and preference_clip must be > 0")
        if not 0 < self.diversity_decay < 1:
            raise TestbedError("adaptive: diversity_decay must be in (0, 1)")
        if len(self.reward_weights) != 3 or min(self.reward_weights) < 0:
            raise TestbedError("adaptive: reward_weights are three non-negative numbers")
        if sum(self.reward_weights) <= 0 or self.knockoff_side < 1:
            raise TestbedError("adaptive: need a positive reward weight and knockoff_side >= 1")


def _softmax(prefs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax over the unmasked entries; max-subtracted, so it is finite for any finite input."""
    z = np.where(mask, prefs, -np.inf)
    z = z - z[mask].max()
    e = np.where(mask, np.exp(z), 0.0)
    return e / e.sum()


class _RunningRange:
    """Running min and max, to rescale a reward to [0, 1] without knowing its scale."""

    def __init__(self) -> None:
        self.low, self.high = np.inf, -np.inf

    def scale(self, value: float) -> float:
        self.low, self.high = min(self.low, value), max(self.high, value)
        span = self.high - self.low
        return 0.5 if span < 1e-12 else (value - self.low) / span


class AdaptiveStrategy:
    """Knockoff Nets' adaptive strategy: a gradient bandit over the pool's label hierarchy.

    Each image is drawn by sampling a coarse group (the pool's `class_groups`, e.g. WordNet
    head nouns), then a class inside it, from softmax policies over preferences, then the next
    unused image of that class. The reward mixes the victim's certainty (top-2 margin), the
    diversity of its answer against the running mean answer, and the loss of a small online
    knockoff (softmax regression on downsampled pixels) on the answer; each part is rescaled to
    [0, 1], and the update uses reward minus a running-mean baseline. Preferences, rewards and
    knockoff weights are kept finite: max-subtracted and clipped preferences, clipped
    probabilities in the loss, a clipped knockoff gradient.
    """

    name = "adaptive"
    needs_feedback = True

    def __init__(
        self,
        targets: Sequence[int] | np.ndarray,
        num_outputs: int,
        budget: int,
        *,
        class_groups: Mapping[str, Sequence[int]] | None = None,
        num_classes: int | None = None,
        seed: int = 0,
        config: AdaptiveConfig | None = None,
    ) -> None:
        self.targets = np.asarray(targets, dtype=np.int64)
        _check_budget(len(self.targets), budget)
        if num_outputs < 1:
            raise TestbedError("adaptive: the API must disclose at least one output")
        self.num_outputs, self.budget, self.seed = num_outputs, budget, seed
        self.num_classes = num_classes or int(self.targets.max()) + 1
        self.class_groups = dict(class_groups or {})
        self.config = config or AdaptiveConfig()
        self._ready = False

    # ------------------------------------------------------------------ lazy state

    def _build(self) -> None:
        """Hierarchy, per-class queues and learner state (on first use, not in __init__)."""
        groups = [list(map(int, g)) for g in self.class_groups.values() if g]
        grouped = {c for g in groups for c in g}
        groups += [[c] for c in range(self.num_classes) if c not in grouped]
        self.groups = groups
        self.group_of = np.zeros(self.num_classes, dtype=np.int64)
        for g, members in enumerate(groups):
            self.group_of[members] = g
        rng = np.random.default_rng([self.seed, 0xADA])
        self.queues = [
            rng.permutation(np.flatnonzero(self.targets == c)) for c in range(self.num_classes)
        ]
        self.heads = np.zeros(self.num_classes, dtype=np.int64)
        self.group_prefs = np.zeros(len(groups))
        self.class_prefs = np.zeros(self.num_classes)
        self.choices: dict[int, tuple[int, int]] = {}
        self.baseline, self.observed = 0.0, 0
        self.mean_answer = np.full(self.num_outputs, 1.0 / self.num_outputs)
        self.ranges = [_RunningRange() for _ in range(3)]
        side = self.config.knockoff_side
        self.weights = np.zeros((side * side * 3, self.num_outputs))
        self.bias = np.zeros(self.num_outputs)
        self.last_rewards = np.zeros(3)
        self._ready = True

    def _class_mask(self) -> np.ndarray:
        return np.asarray([h < len(q) for h, q in zip(self.heads, self.queues, strict=True)])

    # ------------------------------------------------------------------ protocol

    def select(self, start: int, count: int) -> list[int]:
        if not self._ready:
            self._build()
        rng = np.random.default_rng([self.seed, 0x5E1, start])
        picked = []
        for offset in range(count):
            available = self._class_mask()
            group_mask = np.zeros(len(self.groups), dtype=bool)
            group_mask[np.unique(self.group_of[available])] = True
            g = int(rng.choice(len(self.groups), p=_softmax(self.group_prefs, group_mask)))
            members = np.asarray(self.groups[g])
            member_mask = available[members]
            policy = _softmax(self.class_prefs[members], member_mask)
            c = int(members[rng.choice(len(members), p=policy)])
            picked.append(int(self.queues[c][self.heads[c]]))
            self.heads[c] += 1
            self.choices[start + offset] = (g, c)
        return picked

    def observe(
        self, start: int, indices: Sequence[int], images: np.ndarray, answers: Sequence[dict]
    ) -> None:
        if not self._ready:
            self._build()
        if not len(answers):
            return
        y = np.stack([answer_probabilities(a, self.num_outputs) for a in answers])
        x = self._features(images)
        p = self._knockoff(x)
        losses = -(y * np.log(np.clip(p, 1e-8, 1.0))).sum(axis=1)
        cfg = self.config
        weights = np.asarray(cfg.reward_weights) / sum(cfg.reward_weights)
        for row, position in enumerate(range(start, start + len(answers))):
            top = np.sort(y[row])[::-1]
            certainty = float(top[0] - (top[1] if len(top) > 1 else 0.0))
            diversity = float(np.maximum(y[row] - self.mean_answer, 0.0).sum())
            self.mean_answer = (
                cfg.diversity_decay * self.mean_answer + (1 - cfg.diversity_decay) * y[row]
            )
            raw = (certainty, diversity, float(losses[row]))
            scaled = np.asarray([r.scale(v) for r, v in zip(self.ranges, raw, strict=True)])
            scaled = np.nan_to_num(scaled, nan=0.5, posinf=1.0, neginf=0.0)
            reward = float(weights @ scaled)
            self.last_rewards = scaled
            advantage = reward - self.baseline
            self.observed += 1
            self.baseline += (reward - self.baseline) / self.observed
            g, c = self.choices.pop(position, (None, None))
            if g is None:
                raise TestbedError(f"adaptive: answer for position {position} was never selected")
            self._update(g, c, advantage)
        self._train_knockoff(x, y)

    # ------------------------------------------------------------------ learning

    def _update(self, g: int, c: int, advantage: float) -> None:
        """Gradient-bandit step on the chosen group and on the chosen class inside it."""
        lr, clip = self.config.lr, self.config.preference_clip
        available = self._class_mask()
        available[c] = True  # the class that was chosen is part of the policy it came from
        group_mask = np.zeros(len(self.groups), dtype=bool)
        group_mask[np.unique(self.group_of[available])] = True
        group_mask[g] = True
        pi = _softmax(self.group_prefs, group_mask)
        step = -lr * advantage * pi
        step[g] += lr * advantage
        self.group_prefs = np.where(group_mask, self.group_prefs + step, self.group_prefs)
        self.group_prefs = np.clip(self.group_prefs - self.group_prefs.max(), -clip, 0.0)
        members = np.asarray(self.groups[g])
        member_mask = available[members]
        pi_c = _softmax(self.class_prefs[members], member_mask)
        step_c = -lr * advantage * pi_c
        step_c[int(np.flatnonzero(members == c)[0])] += lr * advantage
        prefs = np.where(member_mask, self.class_prefs[members] + step_c, self.class_prefs[members])
        self.class_prefs[members] = np.clip(prefs - prefs.max(), -clip, 0.0)

    def _features(self, images: np.ndarray) -> np.ndarray:
        side = self.config.knockoff_side
        small = np.stack([resize(np.asarray(img, dtype=np.uint8), side) for img in images])
        return small.reshape(len(small), -1).astype(np.float64) / 127.5 - 1.0

    def _knockoff(self, x: np.ndarray) -> np.ndarray:
        logits = x @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def _train_knockoff(self, x: np.ndarray, y: np.ndarray, steps: int = 2) -> None:
        """A few SGD steps of soft-label cross-entropy; the gradient norm is clipped to 1."""
        for _ in range(steps):
            err = (self._knockoff(x) - y) / len(x)
            grad_w, grad_b = x.T @ err, err.sum(axis=0)
            norm = float(np.sqrt((grad_w**2).sum() + (grad_b**2).sum()))
            if not np.isfinite(norm):
                return
            scale = self.config.knockoff_lr / max(1.0, norm)
            self.weights -= scale * grad_w
            self.bias -= scale * grad_b

    # ------------------------------------------------------------------ introspection

    def state(self) -> dict[str, Any]:
        """The learner's numbers (tests check they stay finite; reports can plot them)."""
        if not self._ready:
            self._build()
        return {
            "group_prefs": self.group_prefs.copy(),
            "class_prefs": self.class_prefs.copy(),
            "group_policy": _softmax(self.group_prefs, np.ones(len(self.groups), dtype=bool)),
            "baseline": self.baseline,
            "mean_answer": self.mean_answer.copy(),
            "knockoff_weights": self.weights.copy(),
            "knockoff_bias": self.bias.copy(),
            "last_rewards": self.last_rewards.copy(),
            "observed": self.observed,
        }


def _check_budget(pool_size: int, budget: int) -> None:
    if budget < 1:
        raise TestbedError("the budget must be at least 1 image")
    if budget > pool_size:
        raise TestbedError(
            f"the budget ({budget}) is larger than the pool ({pool_size} images); sampling is "
            f"without replacement: lower --budget or raise --pool-size"
        )


def make_strategy(
    name: str,
    *,
    targets: Sequence[int] | np.ndarray,
    budget: int,
    num_outputs: int,
    seed: int = 0,
    class_groups: Mapping[str, Sequence[int]] | None = None,
    num_classes: int | None = None,
    adaptive: AdaptiveConfig | None = None,
) -> Strategy:
    """A strategy by name for a pool with these labels (the attacker's own pool labels)."""
    if name == "random":
        return RandomStrategy(len(targets), budget, seed)
    if name == "adaptive":
        return AdaptiveStrategy(
            targets, num_outputs, budget, class_groups=class_groups,
            num_classes=num_classes, seed=seed, config=adaptive,
        )  # fmt: skip
    raise UnknownNameError("strategy", name, list(STRATEGIES))
