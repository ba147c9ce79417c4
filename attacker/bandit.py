"""The gradient bandit (Sutton & Barto 2.8), the learner inside Knockoff Nets' adaptive strategy.

Preferences H, policy pi = softmax(H) over the available actions. After reward R_t for action
a_t with baseline R̄: H(a_t) += alpha (R_t - R̄)(1 - pi(a_t)) and H(a) -= alpha (R_t - R̄) pi(a)
for every other a, where pi is the policy standing when a_t was *sampled*, not the one standing
when its reward arrives: the caller keeps it with each pending action, because answers arrive
batches after the choice, when H has moved.

Where a_t was drawn from another policy mu (the strategy's exploring mix of pi with a uniform
share), the step is weighted by pi(a_t) / mu(a_t): its expectation over mu is then the gradient
of pi's expected reward, the quantity Sutton & Barto's update ascends; unweighted, actions that
mu favours over pi would count more than pi gives them. With mu = pi the weight is 1.
"""

from __future__ import annotations

import numpy as np


def softmax_policy(prefs: np.ndarray, available: np.ndarray) -> np.ndarray:
    """softmax(H) over the available actions (0 elsewhere); max-subtracted, so always finite."""
    available = np.asarray(available, dtype=bool)
    if not available.any():
        raise ValueError("no action is available")
    z = np.where(available, prefs, -np.inf)
    e = np.where(available, np.exp(z - z[available].max()), 0.0)
    return e / e.sum()


def bandit_step(
    prefs: np.ndarray,
    action: int,
    policy: np.ndarray,
    advantage: float,
    lr: float,
    clip: float = np.inf,
    behaviour: np.ndarray | None = None,
) -> np.ndarray:
    """New preferences after one reward: H += alpha (R - R̄)(onehot(a_t) - pi).

    `policy` is the softmax standing when `action` was chosen; actions it gave 0 (unavailable
    then) keep their preference. `behaviour`, if given, is the policy the action was actually
    drawn from; the step is then weighted by policy[action] / behaviour[action]. Preferences
    are clipped to [-clip, clip] so exp() never overflows.
    """
    policy = np.asarray(policy, dtype=np.float64)
    if behaviour is not None:
        advantage *= float(policy[action] / behaviour[action])
    step = -lr * advantage * policy
    step[action] += lr * advantage
    return np.clip(prefs + step, -clip, clip)
