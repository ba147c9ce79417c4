"""What the defenses share: per-image randomness, renormalization, the argmax kept, actions.

Every function works row by row (no row ever sees another), so a batch of N gives the same rows
as N batches of one. Randomness is drawn per row from a generator seeded by (seed, salt, the
row's pixels): the same image always gets the same answer, so an attacker cannot average the
noise away by asking again, and the answer does not depend on which requests shared a batch.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch

from shared.pipeline import AnswerBatch

EPS = 1e-12

Action = Literal["shuffle", "reject", "label"]
"""What a detector does to a flagged row: shuffle its vector, refuse it, or give its label."""


def row_uniforms(inputs: torch.Tensor, seed: int, salt: str, n: int) -> torch.Tensor:
    """(B, n) float64 uniforms in (0, 1), a pure function of (seed, salt, the row's pixels).

    SHAKE-256 of the row's bytes is a counter-free stream of any length: no generator objects,
    and the same image always draws the same numbers whatever batch it arrives in.
    """
    pixels = inputs.mul(255).round_().clamp_(0, 255).to(torch.uint8).reshape(len(inputs), -1)
    key = f"{seed}:{salt}:".encode()
    raw = b"".join(hashlib.shake_256(key + row.numpy().tobytes()).digest(8 * n) for row in pixels)
    words = torch.frombuffer(bytearray(raw), dtype=torch.int64).reshape(len(inputs), n)
    # top 53 bits -> (0, 1), never exactly 0 or 1
    bits = (words >> 11) & ((1 << 53) - 1)
    return (bits.double() + 0.5) / float(1 << 53)


def renormalize(probs: torch.Tensor) -> torch.Tensor:
    """Clip at 0 and rescale each row to sum 1; a row that lost all its mass becomes uniform."""
    clipped = probs.clamp_min(0)
    total = clipped.sum(dim=1, keepdim=True)
    uniform = torch.full_like(clipped, 1.0 / clipped.shape[1])
    return torch.where(total > EPS, clipped / total.clamp_min(EPS), uniform)


def keep_argmax(original: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """Swap each row's new top entry with the entry at the original argmax, where they differ.

    A swap keeps the row a distribution and makes the original class the strict-or-tied top,
    so a benign client's top-1 answer is unchanged; ties are broken toward the original class by
    nudging it up by the smallest step and renormalizing.
    """
    label = original.argmax(dim=1, keepdim=True)
    top = perturbed.argmax(dim=1, keepdim=True)
    out = perturbed.clone()
    at_label, at_top = perturbed.gather(1, label), perturbed.gather(1, top)
    out.scatter_(1, label, at_top)
    out.scatter_(1, top, at_label)
    # ties: if another class equals the top value, argmax could pick it; make the label win.
    still_wrong = out.argmax(dim=1, keepdim=True) != label
    if still_wrong.any():
        bumped = out.gather(1, label) * (1 + 1e-9) + 1e-15
        out = torch.where(still_wrong, out.scatter(1, label, bumped), out)
        out = out / out.sum(dim=1, keepdim=True)
    return out


def shuffle(probs: torch.Tensor, mask: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """A random permutation of each masked row (Atli et al.'s answer to a detected query).

    The permutation is the argsort of the row's uniforms. The row stays a valid distribution
    with the same values, so the attacker sees a plausible but wrong answer rather than a
    refusal that tells them they were caught.
    """
    permuted = probs.gather(1, uniforms.argsort(dim=1))
    return torch.where(mask[:, None], permuted, probs)


def apply_action(batch: AnswerBatch, flagged: torch.Tensor, action: str, seed: int, salt: str):
    """Answer the flagged rows as configured: shuffle the vector, refuse, or give the label only."""
    if not flagged.any():
        return batch
    if action == "shuffle":
        uniforms = row_uniforms(batch.inputs, seed, salt, batch.probs.shape[1])
        return batch.replace(probs=shuffle(batch.probs, flagged, uniforms))
    if action == "reject":
        return batch.replace(rejected=batch.mask("rejected") | flagged)
    if action == "label":
        return batch.replace(label_only=batch.mask("label_only") | flagged)
    raise ValueError(f"unknown action {action!r}; use shuffle, reject or label")
