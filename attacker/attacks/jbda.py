"""Papernot et al.'s Jacobian-based dataset augmentation (JBDA, "Practical Black-Box Attacks
against Machine Learning", AsiaCCS 2017): the synthetic-query attack PRADA was built to catch.

Start from a small seed set S_0; in each substitute round rho: label S_rho through the API,
train the knockoff F on every label so far, then
S_{rho+1} = S_rho ∪ {x + lambda_rho * sign(dF_{O(x)}(x)/dx) : x in S_rho}, with O(x) the victim's
label and lambda_rho = lambda * (-1)^floor(rho / tau) (the periodic step of the paper's later
variant; tau unset keeps lambda fixed). Queries double each round: the budget is |S_0| * 2^rounds.

What the attacker is assumed to have: `seed_per_class` labelled images per class from a small
seed source of the victim's task (the paper used 150 images of the MNIST *test* set; here by
default the `test` split of `seed_dataset`). Their own labels only pick a balanced seed set; the
knockoff is trained on the victim's answers. Each round's substitute trains on every label so
far, without translations, and keeps its last epoch; the final knockoff is trained as every
knockoff here (a held-out tenth, translations). Deviations, said here and in the README: each
round trains a fresh knockoff (the reference code warm-starts), and each synthetic image is
clipped to [0, 1] and quantized to 8 bits, since the API takes image files.

The images are in no pool, so every round's images are stored as blobs (keyed by sha256) and
planned positions *before* they are sent: a killed run resumes with exactly the planned images.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import Field
from sqlalchemy import select

from attacker.attacks.base import Attack, AttackParams, Target
from attacker.attacks.registry import register
from attacker.runs import QueryConfig, QueryResult, check_same_api
from attacker.scheduler import PlannedStrategy, query_loop
from attacker.sources import IMAGE_FORMAT, BlobSource
from attacker.store import PlannedImage, Run, open_store, planned_images, store_blobs
from attacker.writer import finish_run, stored_answers
from shared.errors import TestbedError
from shared.imaging import encode_image, resize

if TYPE_CHECKING:
    from attacker.train import KnockoffOptions


class JBDAParams(AttackParams):
    seed_dataset: str = "digits"
    seed_split: str = "test"
    seed_per_class: int = Field(10, ge=1)
    rounds: int = Field(3, ge=0, le=12)
    """Substitute rounds; the budget is |S_0| * 2^rounds queries."""
    lam: float = Field(0.1, gt=0, le=1)
    """lambda, the augmentation step in [0, 1] pixel units."""
    tau: int | None = Field(None, ge=1)
    """Flip the step's sign every tau rounds (None: never)."""
    round_epochs: int = Field(10, ge=1)
    """Epochs of each intermediate substitute (the final knockoff trains `epochs`)."""


def step_size(lam: float, rho: int, tau: int | None) -> float:
    """lambda_rho = lambda * (-1)^floor(rho / tau): the sign flips every tau rounds."""
    return lam if tau is None else lam * (-1) ** (rho // tau)


def jacobian_augment(
    model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, lam: float
) -> torch.Tensor:
    """x + lam * sign(dF_y(x)/dx), clipped to [0, 1]; F the model's softmax, y the victim's label.

    `x` is float (N, C, H, W) in [0, 1]. Rows are independent (the model is put in eval mode),
    so one backward pass through the sum gives every row's own gradient.
    """
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    probs = torch.softmax(model(x), dim=1)
    (grad,) = torch.autograd.grad(probs.gather(1, labels.view(-1, 1)).sum(), x)
    return (x + lam * grad.sign()).clamp(0.0, 1.0).detach()


def seed_set(params: JBDAParams, size: int) -> np.ndarray:
    """`seed_per_class` images of each class of the seed source, seeded, at the API's size."""
    from shared.datasets import load_dataset

    data = load_dataset(params.seed_dataset, params.seed_split, seed=params.seed)
    targets = np.asarray(data.targets)
    rng = np.random.default_rng([params.seed, 0x5EED])
    chosen = []
    for c in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == c))
        if len(members) < params.seed_per_class:
            raise TestbedError(
                f"jbda: the seed source has {len(members)} images of class {c}, fewer than "
                f"seed_per_class={params.seed_per_class}"
            )
        chosen.extend(members[: params.seed_per_class].tolist())
    return np.stack([resize(data.image(int(i)), size) for i in sorted(chosen)])


def round_span(n0: int, rho: int) -> range:
    """Positions labelled in round rho: S_0, then each round's new half."""
    return range(0, n0) if rho == 0 else range(n0 * 2 ** (rho - 1), n0 * 2**rho)


@register("jbda")
class JBDA(Attack):
    Params = JBDAParams
    params: JBDAParams

    def pool_spec(self) -> str:
        p = self.params
        return f"jbda:{p.seed_dataset}:{p.seed_split}:{p.seed_per_class}:{p.lam}:{p.tau}"

    def query(self, target: Target) -> QueryResult:
        config = target.query_config(pool=self.pool_spec(), budget=1, seed=self.params.seed)
        return asyncio.run(self._query(config))

    async def _query(self, config: QueryConfig) -> QueryResult:
        from attacker.query import guarded, open_client

        p = self.params
        factory = open_store(config.db)
        async with open_client(config) as client:
            info = await client.model_info(config.batch_size)
            seeds = await asyncio.to_thread(seed_set, p, info.input_size)
            n0 = len(seeds)
            config = replace(config, budget=n0 * 2**p.rounds)
            run, resumed = self._run(factory, config, info, n0)
            if run.status == "complete":
                return QueryResult(run.id, config.db, run.budget, run.budget, 0, True, True,
                                   True, 0.0, 0.0, run.output_mode)  # fmt: skip
            check_same_api(run, info)
            new = seconds = 0
            for rho in range(p.rounds + 1):
                span = round_span(n0, rho)
                with factory() as session:
                    plan = planned_images(session, run.id)
                if any(position not in plan for position in span):
                    images = seeds if rho == 0 else await asyncio.to_thread(
                        self._augment, config, run.id, rho, n0
                    )  # fmt: skip
                    plan = await asyncio.to_thread(self._plan, factory, run.id, span, images)
                stored = await asyncio.to_thread(stored_answers, factory, run.id, False)
                missing = sum(position not in stored for position in span)
                left = None if config.limit is None else config.limit - new
                if missing and left is not None and left <= 0:
                    break  # --limit reached: the run stays resumable
                round_config = replace(config, limit=left)
                got, took = await guarded(
                    factory, run.id,
                    lambda s=span, pl=plan, st=stored, c=round_config: query_loop(
                        c, run, BlobSource(factory, pl), client, PlannedStrategy(), st,
                        factory, s,
                    ),
                )  # fmt: skip
                new, seconds = new + got, seconds + took
                if got < missing:
                    break  # stopped by --limit inside the round
        answered = len(await asyncio.to_thread(stored_answers, factory, run.id, False))
        complete = answered >= run.budget
        status = "complete" if complete else "running"
        await asyncio.to_thread(finish_run, factory, run.id, status, None)
        return QueryResult(
            run_id=run.id, db=config.db, budget=run.budget, answered=answered, new=new,
            complete=complete, resumed=resumed, already_complete=False, seconds=seconds,
            images_per_s=new / seconds if seconds > 0 else 0.0, output_mode=run.output_mode,
            stats=client.stats,
        )  # fmt: skip

    def _run(self, factory, config: QueryConfig, info, n0: int) -> tuple[Run, bool]:
        """The unfinished run of the same attack, or a new one."""
        with factory() as session, session.begin():
            stmt = (
                select(Run)
                .where(
                    Run.victim_url == config.victim_url,
                    Run.pool == config.pool,
                    Run.strategy == self.name,
                    Run.budget == config.budget,
                    Run.seed == config.seed,
                )  # fmt: skip
                .order_by(Run.id.desc())
            )
            run = session.scalars(stmt).first()
            if run is not None:
                return run, True
            run = Run(
                victim_url=config.victim_url, pool=config.pool, pool_size=n0,
                pool_image_size=info.input_size, strategy=self.name, budget=config.budget,
                seed=config.seed, batch_size=min(config.batch_size, info.max_images_per_request),
                output_mode=info.output, num_outputs=info.num_outputs,
                input_size=info.input_size,
                params={"images": "blobs", "image_format": IMAGE_FORMAT,
                        "send_size": info.input_size, "attack": self.name,
                        "jbda": self.params.model_dump(), "seed_size": n0,
                        "concurrency": config.concurrency, "top_k": info.top_k,
                        "round_decimals": info.round_decimals},
                status="running",
            )  # fmt: skip
            session.add(run)
        return run, False

    def substitute_options(self, progress: bool = False) -> KnockoffOptions:
        """A round's substitute learns every label so far, as the paper's does: no held-out
        tenth (so its last epoch's weights) and no translations, unlike the final knockoff."""
        return replace(
            self.knockoff_options(progress), epochs=self.params.round_epochs, val_fraction=0.0,
            keep="last", pad=0,
        )  # fmt: skip

    def _augment(self, config: QueryConfig, run_id: int, rho: int, n0: int) -> np.ndarray:
        """Round rho's new images: train the substitute on S_{rho-1}'s labels, then step each
        image of S_{rho-1} along the sign of the substitute's gradient for its victim label."""
        from attacker.train import train_knockoff
        from attacker.transfer import load_transfer_set

        p = self.params
        labelled = round_span(n0, rho - 1).stop
        transfer = load_transfer_set(config.db, run_id, labelled)
        model, _ = train_knockoff(transfer, self.substitute_options(config.progress))
        model = model.cpu().float()
        lam = step_size(p.lam, rho - 1, p.tau)
        out = []
        for s in range(0, labelled, 256):
            x = transfer.images[s : s + 256].float() / 255
            stepped = jacobian_augment(model, x, transfer.labels[s : s + 256], lam)
            out.append((stepped * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        return np.concatenate(out)

    @staticmethod
    def _plan(factory, run_id: int, span: range, images: np.ndarray) -> dict[int, str]:
        """Store the round's images (deduplicated blobs) and their positions, in one commit."""
        if len(images) != len(span):
            raise TestbedError(f"jbda: {len(images)} images planned for {len(span)} positions")
        data = [encode_image(image, IMAGE_FORMAT) for image in images]
        with factory() as session, session.begin():
            digests = store_blobs(session, data)
            session.flush()
            have = planned_images(session, run_id)
            for position, digest in zip(span, digests, strict=True):
                if position not in have:
                    session.add(PlannedImage(run_id=run_id, position=position, sha256=digest))
        with factory() as session:
            return planned_images(session, run_id)
