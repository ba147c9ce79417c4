"""Losses that fit what the API returned, and nothing more.

Every answer becomes a target vector `t` and a mask `known` of the classes whose probability the
API disclosed. The loss is the cross-entropy between the disclosed distribution and the
knockoff's distribution coarsened the same way: each known class on its own, all unknown classes
pooled into one bucket holding the undisclosed mass `1 - sum(t[known])`.
- probabilities (Knockoff Nets): every class known: soft-label cross-entropy;
- top-k: k classes known, the rest pooled: no invented probabilities;
- label (Copycat): the one-hot of the label, every class known: hard-label cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """-sum_c p_c log q_c, averaged over the batch."""
    return -(probs * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def hard_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def topk_cross_entropy(
    logits: torch.Tensor, probs: torch.Tensor, known: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy over the known classes plus one bucket for all the undisclosed ones."""
    log_q = F.log_softmax(logits, dim=1)
    known = known.bool()
    known_term = -(torch.where(known, probs, 0.0) * torch.where(known, log_q, 0.0)).sum(dim=1)
    rest_mass = (1.0 - torch.where(known, probs, 0.0).sum(dim=1)).clamp_min(0.0)
    has_unknown = (~known).any(dim=1)
    # log of the knockoff's mass on unknown classes; rows with none get a finite dummy (weight 0)
    masked = torch.where(has_unknown[:, None], log_q.masked_fill(known, float("-inf")), log_q)
    rest_log_q = torch.logsumexp(masked, dim=1)
    rest_term = torch.where(has_unknown & (rest_mass > 0), -rest_mass * rest_log_q, 0.0)
    return (known_term + rest_term).mean()


def answer_loss(mode: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss for targets packed as (N, 2, C): [:, 0] the disclosed vector, [:, 1] the mask."""
    if mode == "probs":
        return lambda logits, y: soft_cross_entropy(logits, y[:, 0])
    if mode == "label":
        return lambda logits, y: hard_cross_entropy(logits, y[:, 0].argmax(dim=1))
    if mode == "topk":
        return lambda logits, y: topk_cross_entropy(logits, y[:, 0], y[:, 1])
    raise ValueError(f"unknown output mode {mode!r}")
