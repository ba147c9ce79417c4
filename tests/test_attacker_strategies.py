"""Query strategies offline: deterministic plans, finite bandit state, answers as vectors."""

from __future__ import annotations

import numpy as np
import pytest

from attacker.bandit import bandit_step, softmax_policy
from attacker.rewards import certainty, diversity, effective_target, knockoff_loss
from attacker.strategies import (
    REWARD_CLIP,
    AdaptiveConfig,
    AdaptiveStrategy,
    RandomStrategy,
    make_strategy,
)
from shared.errors import TestbedError
from shared.schemas import parse_answer


def test_random_plan_is_a_seeded_sample_without_replacement():
    plan = RandomStrategy(1000, 300, seed=3).plan
    assert len(plan) == 300 and len(set(plan.tolist())) == 300
    assert plan.min() >= 0 and plan.max() < 1000
    again = RandomStrategy(1000, 300, seed=3)
    pieces = again.select(0, 7) + again.select(7, 100) + again.select(107, 193)
    assert pieces == plan.tolist()
    assert RandomStrategy(1000, 300, seed=4).plan.tolist() != plan.tolist()
    # a prefix of a larger budget is the smaller budget: budgets are nested
    assert RandomStrategy(1000, 500, seed=3).plan[:300].tolist() == plan.tolist()


def test_budget_larger_than_pool_and_unknown_strategy_are_refused():
    with pytest.raises(TestbedError, match="larger than the pool"):
        RandomStrategy(10, 11)
    with pytest.raises(TestbedError, match="unknown strategy"):
        make_strategy("greedy", targets=[0, 1], budget=1, num_outputs=2)


def _victim(images: np.ndarray, mode: str, rng: np.random.Generator) -> list[dict]:
    """A synthetic, extreme victim: one-hot on bright images, ties and labels elsewhere."""
    out = []
    for image in images:
        bright = float(image.mean()) / 255
        if mode == "probs":
            p = np.zeros(10)
            p[int(bright * 9.99)] = 1.0 if bright > 0.5 else 0.5
            p[0] += 1.0 - p.sum()
            out.append({"probabilities": p.tolist()})
        elif mode == "topk":
            out.append({"top_k": [{"index": int(rng.integers(10)), "probability": 1.0}]})
        else:
            out.append({"label": int(rng.integers(10))})
    return out


def _pool(n: int = 4000, classes: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, classes, size=n)
    # class c's images have brightness c / classes: higher classes give the victim certainty
    images = np.stack([np.full((4, 4, 3), int(255 * t / classes), np.uint8) for t in targets])
    groups = {f"g{g}": list(range(g * 4, g * 4 + 4)) for g in range(classes // 4)}
    return targets, images, groups


def _drive(strategy, images, budget: int, batch: int, window: int, mode: str) -> list[int]:
    """What the orchestrator does: select in order, observe `window` batches late."""
    rng = np.random.default_rng(1)
    chosen: list[int] = []
    answered: list[tuple[int, list[int], list[dict]]] = []
    for k, start in enumerate(range(0, budget, batch)):
        if k - window - 1 >= 0:
            s, idx, ans = answered[k - window - 1]
            strategy.observe(s, idx, images[idx], ans)
        idx = strategy.select(start, min(batch, budget - start))
        chosen += idx
        answered.append((start, idx, _victim(images[idx], mode, rng)))
    return chosen


@pytest.mark.parametrize("mode", ["probs", "topk", "label"])
def test_adaptive_state_stays_finite_on_a_long_run(mode):
    targets, images, groups = _pool()
    strategy = AdaptiveStrategy(targets, 10, 3900, class_groups=groups, seed=0)
    chosen = _drive(strategy, images, 3900, 8, 4, mode)
    assert len(chosen) == 3900 and len(set(chosen)) == 3900  # without replacement, to the end
    state = strategy.state()
    for name in ("group_prefs", "class_prefs", "group_policy", "mean_answer", "knockoff_weights"):
        assert np.all(np.isfinite(state[name])), name
    assert np.isfinite(state["baseline"]) and abs(state["baseline"]) <= REWARD_CLIP
    assert state["group_prefs"].min() >= -strategy.config.preference_clip
    assert state["group_policy"].sum() == pytest.approx(1.0)
    assert state["observed"] > 3000


def test_adaptive_prefers_the_groups_the_victim_is_certain_about():
    targets, images, groups = _pool()
    strategy = AdaptiveStrategy(targets, 10, 1500, class_groups=groups, seed=0)
    chosen = _drive(strategy, images, 1500, 8, 2, "probs")
    late = targets[chosen[-500:]]
    # the top half of the classes gives certain answers; random sampling would pick it ~50%
    assert np.mean(late >= 20) > 0.6


def test_adaptive_is_deterministic_given_the_same_answers():
    targets, images, groups = _pool()
    runs = [
        _drive(AdaptiveStrategy(targets, 10, 600, class_groups=groups, seed=5), images, 600, 8, 3,
               "probs")
        for _ in range(2)
    ]  # fmt: skip
    assert runs[0] == runs[1]
    other = _drive(
        AdaptiveStrategy(targets, 10, 600, class_groups=groups, seed=6), images, 600, 8, 3, "probs"
    )
    assert other != runs[0]


def _one_group_pool(classes: int = 10, n: int = 400):
    targets = np.arange(n) % classes
    images = np.stack([np.full((4, 4, 3), 20 * (t + 1), np.uint8) for t in targets])
    return targets, images, {"all": list(range(classes))}


def test_adaptive_updates_with_the_policy_it_sampled_from_not_the_current_one():
    """Positions 0-2 are chosen from the uniform starting policy; the answers of 0 and 1 move
    the preferences (the first z-scored reward is 0, the second is not) before position 2's
    arrives. Sutton & Barto 2.8 with the *sampled* policy moves every class but position 2's
    by the same amount (uniform pi); the policy standing at answer time would not."""
    targets, images, groups = _one_group_pool()
    strategy = AdaptiveStrategy(targets, 10, 100, class_groups=groups, seed=0)
    picks = [strategy.select(p, 1) for p in range(3)]
    chosen = [int(targets[p[0]]) for p in picks]
    assert chosen[1] != chosen[2]  # the seed is chosen so that they pick different classes
    vague = {"probabilities": [0.1] * 10}
    sure = {"probabilities": [0.0] * 9 + [1.0]}
    for position, answer in ((0, vague), (1, sure)):
        strategy.observe(position, picks[position], images[picks[position]], [answer])
    before = strategy.state()["class_prefs"]
    baseline = strategy.state()["baseline"]  # R̄ when position 2's answer arrives
    assert np.ptp(before) > 0  # position 1's update made the current policy non-uniform
    strategy.observe(2, picks[2], images[picks[2]], [sure])
    delta = strategy.state()["class_prefs"] - before
    others = np.delete(delta, chosen[2])
    assert np.ptp(delta) > 1e-3  # a real update happened
    assert np.allclose(others, others[0], atol=1e-12)
    reward = float(np.mean(strategy.state()["last_rewards"]))  # equal weights
    assert delta[chosen[2]] - others[0] == pytest.approx(strategy.config.lr * (reward - baseline))


def test_gradient_bandit_step_replays_sutton_and_barto_on_hand_made_numbers():
    """H(a_t) += alpha (R - R̄)(1 - pi(a_t)); H(a) -= alpha (R - R̄) pi(a), pi the sampled
    policy. Hand computation: pi = softmax([0, 1, -1]) = [0.244728, 0.665241, 0.090031],
    a_t = 2, alpha = 0.1, R = 0.8, R̄ = 0.3."""
    prefs = np.array([0.0, 1.0, -1.0])
    pi = softmax_policy(prefs, np.ones(3, bool))
    assert pi == pytest.approx([0.244728, 0.665241, 0.090031], abs=1e-6)
    new = bandit_step(prefs, 2, pi, 0.8 - 0.3, 0.1)
    assert new == pytest.approx([-0.0122364, 0.9667380, -0.9545016], abs=1e-6)
    # the policy passed in is the one used: another policy gives another step
    other = bandit_step(prefs, 2, np.array([0.5, 0.5, 0.0]), 0.5, 0.1)
    assert other == pytest.approx([-0.025, 0.975, -0.95])
    # actions unavailable when sampling (pi = 0) keep their preference; clipping bounds them
    masked = softmax_policy(prefs, np.array([True, False, True]))
    assert masked[1] == 0 and bandit_step(prefs, 0, masked, 1.0, 0.1)[1] == 1.0
    assert bandit_step(np.array([29.9, 0.0]), 0, np.array([0.0, 1.0]), 1.0, 1.0, 30.0)[0] == 30


def test_a_step_drawn_from_the_exploring_mix_is_weighted_by_softmax_over_mix():
    """Hand computation: pi = softmax([0, 1, -1]), mu = 0.9 pi + 0.1 uniform = [0.253589,
    0.632050, 0.114361]; a_t = 2, so the step of the replay above is weighted by
    pi(2) / mu(2) = 0.090031 / 0.114361 = 0.787250."""
    prefs = np.array([0.0, 1.0, -1.0])
    pi = softmax_policy(prefs, np.ones(3, bool))
    mu = 0.9 * pi + 0.1 / 3
    new = bandit_step(prefs, 2, pi, 0.8 - 0.3, 0.1, behaviour=mu)
    assert new == pytest.approx([-0.0096331, 0.9738145, -0.9641813], abs=1e-6)
    assert bandit_step(prefs, 2, pi, 0.5, 0.1, behaviour=pi) == pytest.approx(
        bandit_step(prefs, 2, pi, 0.5, 0.1)
    )


def test_the_weighted_step_follows_the_softmax_policys_gradient_in_expectation():
    """Sutton & Barto's update ascends the softmax policy's expected reward: E_pi[(R - b)(e_a -
    pi)] = sum_a pi(a) r(a) (e_a - pi). Actions drawn from the mix mu instead: the step weighted
    by pi / mu has exactly that expectation over mu; unweighted, it has another."""
    prefs = np.array([2.0, 0.0, -1.0, 0.5])
    reward = np.array([0.3, -1.0, 2.0, 0.1])  # expected advantage of each action
    pi = softmax_policy(prefs, np.ones(4, bool))
    mu = 0.7 * pi + 0.3 / 4
    gradient = sum(pi[a] * reward[a] * (np.eye(4)[a] - pi) for a in range(4))

    def expected(weighted: bool) -> np.ndarray:
        steps = [
            bandit_step(prefs, a, pi, reward[a], 1.0, behaviour=mu if weighted else None) - prefs
            for a in range(4)
        ]
        return sum(mu[a] * steps[a] for a in range(4))

    assert expected(weighted=True) == pytest.approx(gradient, abs=1e-12)
    assert not np.allclose(expected(weighted=False), gradient, atol=1e-3)


def test_adaptive_weights_its_step_by_softmax_over_the_mix_it_drew_from():
    """Preferences set by hand (not uniform), exploration 0.1: position 1's class step is
    lr (R - R̄) pi(c)/mu(c) (e_c - pi), pi the softmax of those preferences and mu = 0.9 pi +
    0.1 / 10 (position 0's first z-scored reward is 0, so it moves nothing)."""
    targets, images, groups = _one_group_pool()
    strategy = AdaptiveStrategy(targets, 10, 100, class_groups=groups, seed=0)
    strategy.select(0, 0)  # builds the state
    strategy.class_prefs[:] = np.linspace(-1.0, 1.0, 10)
    pi = softmax_policy(strategy.class_prefs, np.ones(10, bool))
    picks = [strategy.select(p, 1) for p in range(2)]
    assert strategy.choices[1].class_drawn == pytest.approx(0.9 * pi + 0.01)
    before = strategy.state()["class_prefs"]
    strategy.observe(0, picks[0], images[picks[0]], [{"probabilities": [0.1] * 10}])
    assert np.array_equal(strategy.state()["class_prefs"], before)
    strategy.observe(1, picks[1], images[picks[1]], [{"probabilities": [0.0] * 9 + [1.0]}])
    c = int(targets[picks[1][0]])
    advantage = float(np.mean(strategy.state()["last_rewards"]))  # R̄ was 0
    weight = pi[c] / (0.9 * pi[c] + 0.01)
    step = strategy.config.lr * advantage * weight * (np.eye(10)[c] - pi)
    assert abs(advantage) > 0.1 and weight != pytest.approx(1.0, abs=0.01)
    assert strategy.state()["class_prefs"] - before == pytest.approx(step, abs=1e-12)


def test_rewards_use_only_what_was_disclosed():
    label = parse_answer({"label": 2}, 4)
    assert certainty(label) is None
    top1 = parse_answer({"top_k": [{"index": 1, "probability": 0.7}]}, 4)
    assert certainty(top1) == pytest.approx(0.4)  # the runner-up can be at most 0.3
    top2 = parse_answer(
        {"top_k": [{"index": 1, "probability": 0.7}, {"index": 3, "probability": 0.0}]}, 4
    )
    assert certainty(top2) == pytest.approx(0.7)
    # the knockoff's loss on a top-k answer ignores how it splits the undisclosed mass
    a, b = np.array([0.1, 0.5, 0.3, 0.1]), np.array([0.35, 0.5, 0.05, 0.1])
    assert knockoff_loss(top1, a) == pytest.approx(knockoff_loss(top1, b))
    assert knockoff_loss(top1, a) == pytest.approx(-0.7 * np.log(0.5) - 0.3 * np.log(0.5))
    # a disclosed 0 stays 0 in the gradient's target (not overwritten by a share of the rest)
    y = effective_target(top2, a)
    assert y[3] == 0 and y[1] == pytest.approx(0.7) and y.sum() == pytest.approx(1.0)
    assert knockoff_loss(label, a) == pytest.approx(-np.log(0.3))


def test_the_group_level_step_is_the_same_rule_on_the_groups_policy():
    """The hierarchy: a group is drawn, then a class inside it; both levels take the weighted
    Sutton & Barto step with the same advantage, each on its own policy (10 groups of 4)."""
    targets, images, groups = _pool(n=800)
    strategy = AdaptiveStrategy(targets, 10, 100, class_groups=groups, seed=0)
    strategy.select(0, 0)
    strategy.group_prefs[:] = np.linspace(0.5, -0.5, 10)
    pi = softmax_policy(strategy.group_prefs, np.ones(10, bool))
    picks = [strategy.select(p, 1) for p in range(2)]
    before = strategy.state()
    strategy.observe(0, picks[0], images[picks[0]], [{"probabilities": [0.1] * 10}])
    strategy.observe(1, picks[1], images[picks[1]], [{"probabilities": [0.0] * 9 + [1.0]}])
    c = int(targets[picks[1][0]])
    g = c // 4
    advantage = float(np.nanmean(strategy.state()["last_rewards"]))
    step = strategy.config.lr * advantage * pi[g] / (0.9 * pi[g] + 0.01) * (np.eye(10)[g] - pi)
    assert abs(advantage) > 0.1
    assert strategy.state()["group_prefs"] - before["group_prefs"] == pytest.approx(step)
    moved = strategy.state()["class_prefs"] - before["class_prefs"]
    inside = np.arange(g * 4, g * 4 + 4)
    assert np.count_nonzero(moved) == 4 and np.all(moved[inside] != 0)  # the group's classes
    uniform = np.full(4, 0.25)  # the classes' policy was still uniform: weight 1
    expected = strategy.config.lr * advantage * (np.eye(4)[c - g * 4] - uniform)
    assert moved[inside] == pytest.approx(expected)


def test_diversity_is_the_answers_excess_over_the_running_mean_answer():
    """Knockoff Nets' R_div = sum_k max(0, y_k - mean_k); the mean is an exponential moving
    average of the answers (decay 0.98, from uniform), updated after each reward."""
    mean = np.array([0.4, 0.3, 0.3])
    assert diversity(parse_answer({"probabilities": [0.7, 0.2, 0.1]}, 3), mean) == (
        pytest.approx(0.3)
    )
    assert diversity(parse_answer({"label": 1}, 3), np.array([0.2, 0.5, 0.3])) == (
        pytest.approx(0.5)
    )
    assert diversity(parse_answer({"probabilities": [0.4, 0.3, 0.3]}, 3), mean) == 0.0
    targets, images, groups = _one_group_pool()
    strategy = AdaptiveStrategy(targets, 10, 100, class_groups=groups, seed=0)
    pick = strategy.select(0, 1)
    answer = [0.0] * 9 + [1.0]
    strategy.observe(0, pick, images[pick], [{"probabilities": answer}])
    assert strategy.state()["mean_answer"] == pytest.approx(0.98 * 0.1 + 0.02 * np.array(answer))


@pytest.mark.parametrize("mode", ["topk", "label"])
def test_adaptive_rewards_from_partial_answers_stay_in_range(mode):
    targets, images, groups = _pool(n=800)
    strategy = AdaptiveStrategy(targets, 10, 400, class_groups=groups, seed=0)
    _drive(strategy, images, 400, 8, 1, mode)
    rewards = strategy.state()["last_rewards"]
    assert np.isnan(rewards[0]) == (mode == "label")  # a label has no certainty to reward
    assert np.all(np.abs(rewards[1:]) <= REWARD_CLIP)  # z-scored, clipped


def test_exploration_keeps_every_group_in_the_sample_when_rewards_favour_a_few():
    """With a step size that collapses the softmax (0.5, no mix) the dark groups starve; with
    EXP3's uniform share g each of the 10 groups keeps at least about g / 10 of the picks."""
    targets, images, groups = _pool()
    held = np.bincount(targets // 4, minlength=10)
    shares = {}
    for mix in (0.0, 0.3):
        config = AdaptiveConfig(lr=0.5, exploration=mix)
        strategy = AdaptiveStrategy(targets, 10, 2000, class_groups=groups, seed=0, config=config)
        picked = targets[_drive(strategy, images, 2000, 8, 2, "probs")] // 4
        left = np.bincount(picked, minlength=10) < held  # groups never emptied
        shares[mix] = (np.bincount(picked[-1000:], minlength=10) / 1000)[left]
    assert shares[0.0].min() < 0.01, shares  # the collapse the mix is there to prevent
    assert shares[0.3].min() > 0.015, shares  # g / 10 = 0.03, less noise and emptied classes


def test_reward_parts_are_z_scored_by_their_running_moments():
    targets, images, groups = _pool(n=800)
    strategy = AdaptiveStrategy(targets, 10, 400, class_groups=groups, seed=0)
    _drive(strategy, images, 400, 8, 1, "probs")
    moments = strategy.moments[0]  # certainty
    assert moments.count > 300 and moments.m2 > 0
    value = moments.mean + 2 * np.sqrt(moments.m2 / moments.count)
    assert moments.scale(value) == pytest.approx(2.0, abs=0.05)  # two standard deviations up
    with pytest.raises(TestbedError, match="exploration"):
        AdaptiveConfig(exploration=1.5)
