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

from attacker.bandit import bandit_step, softmax_policy
from attacker.rewards import certainty, diversity, effective_target, knockoff_loss
from shared.errors import TestbedError, UnknownNameError
from shared.imaging import resize
from shared.schemas import Answer, parse_answer

STRATEGIES = ("random", "adaptive")


class Strategy(Protocol):
    """Chooses pool indices for plan positions; learns from answers if `needs_feedback`."""

    name: str
    needs_feedback: bool

    def select(self, start: int, count: int) -> list[int]:
        """Pool indices for positions start .. start + count - 1 (called in position order)."""
        ...

    def observe(
        self, start: int, indices: Sequence[int], images: np.ndarray, answers: Sequence[Any]
    ) -> None:
        """The victim's answers (`Answer`s or their JSON) for those positions, in order."""
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

    lr: float = 0.05
    """Step size of the preference updates. 0.5 collapsed onto a few pool classes (the
    preferences random-walk on noisy rewards faster than any signal shows; see budget)."""
    exploration: float = 0.1
    """EXP3's uniform mix (not in Knockoff Nets; 0 is the paper's bandit): each choice is drawn
    from (1 - g) softmax(H) + g uniform, so no available group or class falls below g / count;
    the preferences learn from every choice, each step weighted by softmax / mix."""
    reward_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Weights of (certainty, diversity, loss) after each is z-scored by its running mean and
    standard deviation (as ART's KnockoffNets normalizes them)."""
    diversity_decay: float = 0.98
    """Decay of the running mean answer that diversity is measured against."""
    preference_clip: float = 30.0
    """Preferences are kept in [-clip, clip], so exp() never overflows."""
    knockoff_lr: float = 0.5
    knockoff_side: int = 8
    """The online knockoff reads images downsampled to side x side pixels."""

    def __post_init__(self) -> None:
        if not (self.lr > 0 and self.knockoff_lr > 0 and self.preference_clip > 0):
            raise TestbedError("adaptive: lr, knockoff_lr and preference_clip must be > 0")
        if not 0 <= self.exploration <= 1:
            raise TestbedError("adaptive: exploration must be in [0, 1]")
        if not 0 < self.diversity_decay < 1:
            raise TestbedError("adaptive: diversity_decay must be in (0, 1)")
        if len(self.reward_weights) != 3 or min(self.reward_weights) < 0:
            raise TestbedError("adaptive: reward_weights are three non-negative numbers")
        if sum(self.reward_weights) <= 0 or self.knockoff_side < 1:
            raise TestbedError("adaptive: need a positive reward weight and knockoff_side >= 1")


@dataclass(frozen=True)
class _Choice:
    """A pending choice: the group, the class's place in it, the softmax policies standing
    then, and the exploring mixes the choice was drawn from."""

    group: int
    member: int
    group_policy: np.ndarray
    class_policy: np.ndarray
    group_drawn: np.ndarray
    class_drawn: np.ndarray


class _RunningMoments:
    """Running mean and standard deviation (Welford), to z-score a reward part whatever its
    scale, as ART's KnockoffNets normalizes each part before averaging them."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def scale(self, value: float) -> float:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)
        std = np.sqrt(self.m2 / self.count)
        if self.count < 2 or std < 1e-12:
            return 0.0
        return float(np.clip((value - self.mean) / std, -REWARD_CLIP, REWARD_CLIP))


REWARD_CLIP = 5.0
"""A z-scored reward part is kept in [-5, 5], so one outlier cannot swing the preferences."""


def _explore(policy: np.ndarray, available: np.ndarray, share: float) -> np.ndarray:
    """(1 - share) policy + share uniform over the available actions (EXP3's mix)."""
    uniform = available / available.sum()
    return (1.0 - share) * policy + share * uniform


class AdaptiveStrategy:
    """Knockoff Nets' adaptive strategy: a gradient bandit over the pool's label hierarchy.

    Each image is drawn by sampling a coarse group (the pool's `class_groups`, e.g. WordNet
    head nouns), then a class inside it, from softmax policies over preferences, then the next
    unused image of that class. The reward mixes the victim's certainty (top-2 margin), the
    diversity of its answer against the running mean answer, and the loss of a small online
    knockoff (softmax regression on downsampled pixels) on the answer, each from what the API
    disclosed only (`attacker.rewards`); each part is z-scored by its running mean and standard
    deviation and the parts an answer cannot tell (certainty of a bare label) are left out. The
    update (`attacker.bandit`) uses reward minus a running-mean baseline and the softmax
    policies standing when the choice was made; the choice itself is drawn from those policies
    mixed with a uniform share (`exploration`, as EXP3: not in the paper), so the bandit cannot
    starve a class, and each step is weighted by softmax / mix at the chosen action, so that
    it still follows the softmax policy's gradient. `exploration=0` is the paper's bandit.
    Preferences, rewards and knockoff weights are kept finite: clipped preferences, clipped
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
        self.choices: dict[int, _Choice] = {}
        self.baseline, self.observed = 0.0, 0
        self.mean_answer = np.full(self.num_outputs, 1.0 / self.num_outputs)
        self.moments = [_RunningMoments() for _ in range(3)]
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
            share = self.config.exploration
            group_policy = softmax_policy(self.group_prefs, group_mask)
            group_drawn = _explore(group_policy, group_mask, share)
            g = int(rng.choice(len(self.groups), p=group_drawn))
            members = np.asarray(self.groups[g])
            class_policy = softmax_policy(self.class_prefs[members], available[members])
            class_drawn = _explore(class_policy, available[members], share)
            local = int(rng.choice(len(members), p=class_drawn))
            c = int(members[local])
            picked.append(int(self.queues[c][self.heads[c]]))
            self.heads[c] += 1
            # the update uses the policies this choice was sampled from (Sutton & Barto 2.8),
            # not the ones standing when its answer arrives, batches later
            self.choices[start + offset] = _Choice(
                g, local, group_policy, class_policy, group_drawn, class_drawn
            )
        return picked

    def observe(
        self, start: int, indices: Sequence[int], images: np.ndarray, answers: Sequence[Any]
    ) -> None:
        if not self._ready:
            self._build()
        if not len(answers):
            return
        parsed = [parse_answer(a, self.num_outputs) for a in answers]
        x = self._features(images)
        q = self._knockoff(x)
        for row, position in enumerate(range(start, start + len(parsed))):
            reward = self._reward(parsed[row], q[row])
            advantage = reward - self.baseline
            self.observed += 1
            self.baseline += (reward - self.baseline) / self.observed
            choice = self.choices.pop(position, None)
            if choice is None:
                raise TestbedError(f"adaptive: answer for position {position} was never selected")
            self._update(choice, advantage)
        self._train_knockoff(x, parsed)

    # ------------------------------------------------------------------ learning

    def _reward(self, answer: Answer, q: np.ndarray) -> float:
        """Weighted mean of the reward parts the answer discloses, each z-scored."""
        cfg = self.config
        raw = (
            certainty(answer),
            diversity(answer, self.mean_answer),
            knockoff_loss(answer, q),
        )
        target, _ = answer.target()
        self.mean_answer = cfg.diversity_decay * self.mean_answer + (1 - cfg.diversity_decay) * (
            target
        )
        total = weight = 0.0
        scaled = np.full(3, np.nan)
        parts = zip(raw, self.moments, cfg.reward_weights, strict=True)
        for i, (value, moments, w) in enumerate(parts):
            if value is None or not np.isfinite(value) or w == 0:
                continue
            scaled[i] = moments.scale(float(value))
            total, weight = total + w * scaled[i], weight + w
        self.last_rewards = scaled
        return total / weight if weight > 0 else 0.0

    def _update(self, choice: _Choice, advantage: float) -> None:
        """Gradient-bandit step on the chosen group and on the chosen class inside it, each
        weighted by softmax / exploring mix at the choice (`bandit_step`'s `behaviour`)."""
        lr, clip = self.config.lr, self.config.preference_clip
        self.group_prefs = bandit_step(
            self.group_prefs, choice.group, choice.group_policy, advantage, lr, clip,
            behaviour=choice.group_drawn,
        )  # fmt: skip
        members = np.asarray(self.groups[choice.group])
        self.class_prefs[members] = bandit_step(
            self.class_prefs[members], choice.member, choice.class_policy, advantage, lr, clip,
            behaviour=choice.class_drawn,
        )  # fmt: skip

    def _features(self, images: np.ndarray) -> np.ndarray:
        side = self.config.knockoff_side
        small = np.stack([resize(np.asarray(img, dtype=np.uint8), side) for img in images])
        return small.reshape(len(small), -1).astype(np.float64) / 127.5 - 1.0

    def _knockoff(self, x: np.ndarray) -> np.ndarray:
        logits = x @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def _train_knockoff(self, x: np.ndarray, answers: Sequence[Answer], steps: int = 2) -> None:
        """A few SGD steps of the pooled cross-entropy; the gradient norm is clipped to 1."""
        for _ in range(steps):
            q = self._knockoff(x)
            y = np.stack([effective_target(a, row) for a, row in zip(answers, q, strict=True)])
            err = (q - y) / len(x)
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
            "group_policy": softmax_policy(self.group_prefs, np.ones(len(self.groups), bool)),
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
