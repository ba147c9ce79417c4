"""Knockoff Nets (Orekondy et al., CVPR 2019): natural images from another distribution, sampled
at random or by the adaptive gradient bandit, answered by the API, then a knockoff trained on
whatever the API disclosed (soft labels when it gives probabilities)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from attacker.attacks.base import Attack, AttackParams, Target
from attacker.attacks.registry import register
from attacker.runs import QueryResult


class KnockoffParams(AttackParams):
    budget: int = Field(ge=1)
    pool: str = "natural"
    pool_size: int | None = Field(None, ge=1)
    pool_image_size: int | None = Field(None, ge=1)
    strategy: Literal["random", "adaptive"] = "random"
    native_size: bool = False
    """Send images at the pool's size instead of the API's input size."""


@register("knockoff")
class KnockoffNets(Attack):
    Params = KnockoffParams
    params: KnockoffParams

    def query(self, target: Target) -> QueryResult:
        from attacker.query import run_query

        p = self.params
        return run_query(
            target.query_config(
                pool=p.pool,
                budget=p.budget,
                strategy=p.strategy,
                seed=p.seed,
                pool_size=p.pool_size,
                pool_image_size=p.pool_image_size,
                resize_to_input=not p.native_size,
            )  # fmt: skip
        )
