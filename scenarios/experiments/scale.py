"""The two scales every experiment runs at, in one home.

Default: the CIFAR-10 victim (`cifar10-jpeg`, its recipe in victim_service/recipes.py), the
attacker's half of Tiny-ImageNet as the query pool, the defender's half as the defender's data,
and the realistic demo's knockoff. Quick: the embedded data only (digits victim, the seeded
`natural` pool), small enough for a test on 2 CPU cores.
"""

from __future__ import annotations

from attacker.train import KnockoffOptions
from scenarios.demo import PRESETS
from scenarios.experiments.steps import VictimSpec

VICTIM = VictimSpec.of("cifar10-jpeg")
POOL = "tiny-imagenet-attacker"
DEFENDER_DATA = "tiny-imagenet-defender"

QUICK_VICTIM = VictimSpec.of("digits", epochs=8)
"""The test suite's victim fixture's recipe (cnn5, 8 epochs), so tests can seed the cache."""
QUICK_POOL = "natural"


def knockoff() -> KnockoffOptions:
    """The realistic demo's knockoff (cnn9 from scratch), a fresh object each call."""
    demo = PRESETS["realistic"]
    return KnockoffOptions(
        arch=demo.knockoff_arch,
        epochs=demo.knockoff_epochs,
        batch_size=demo.knockoff_batch_size,
        lr=demo.knockoff_lr,
        progress=False,
    )


def quick_knockoff() -> KnockoffOptions:
    """The attacker's default knockoff (cnn5), trained briefly."""
    return KnockoffOptions(epochs=6, batch_size=32, progress=False)
