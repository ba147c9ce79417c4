"""Knockoff Nets' adaptive rewards, computed from what the API disclosed and nothing more.

certainty: the margin between the top two disclosed probabilities (a lower bound for a top-1
answer; unknown for a bare label). diversity: how much the answer's target vector exceeds the
running mean answer. loss: the online knockoff's cross-entropy on the answer, with undisclosed
classes pooled into one bucket (as `attacker.losses` trains the real knockoff).
"""

from __future__ import annotations

import numpy as np

from shared.schemas import Answer


def certainty(answer: Answer) -> float | None:
    """Top-1 minus top-2 disclosed probability; None when the API disclosed only the label."""
    if answer.probabilities is not None:
        top = sorted(answer.probabilities, reverse=True)
    elif answer.top_k is not None:
        top = sorted((p for _, p in answer.top_k), reverse=True)
        if len(top) == 1 and answer.num_outputs > 1:
            # the runner-up is at most min(top1, 1 - top1): the smallest margin it allows
            return top[0] - min(top[0], 1.0 - top[0])
    else:
        return None
    return float(top[0] - (top[1] if len(top) > 1 else 0.0))


def effective_target(answer: Answer, q: np.ndarray) -> np.ndarray:
    """The target whose `q - target` is the gradient of the pooled cross-entropy at q.

    Known classes keep their disclosed values; the undisclosed mass is spread as the knockoff
    itself spreads it (so it pulls on the bucket, never on an invented split of it).
    """
    t, known = answer.target()
    rest = max(0.0, 1.0 - float(t[known].sum()))
    unknown_mass = float(q[~known].sum())
    out = np.where(known, t, 0.0)
    if rest > 0 and unknown_mass > 0:
        out = out + np.where(known, 0.0, rest * q / unknown_mass)
    return out


def knockoff_loss(answer: Answer, q: np.ndarray) -> float:
    """Cross-entropy of the knockoff's q on the disclosed answer, undisclosed classes pooled."""
    t, known = answer.target()
    logq = np.log(np.clip(q, 1e-8, 1.0))
    loss = -float((t[known] * logq[known]).sum())
    rest = max(0.0, 1.0 - float(t[known].sum()))
    if rest > 0 and (~known).any():
        loss -= rest * float(np.log(max(float(q[~known].sum()), 1e-8)))
    return loss


def diversity(answer: Answer, mean_answer: np.ndarray) -> float:
    """The answer's excess over the running mean answer (0 when it is just the average)."""
    t, _ = answer.target()
    return float(np.maximum(t - mean_answer, 0.0).sum())
