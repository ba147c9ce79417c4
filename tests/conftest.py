"""Shared fixtures: a small trained digits victim, cached for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Each test run writes caches under a temporary folder, never into the user's home."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("TESTBED_CACHE_DIR", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))
    monkeypatch.setenv("TESTBED_EXPERIMENTS_CACHE_DIR", str(cache / "experiments"))


@pytest.fixture(scope="session")
def victim_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cnn5 digits victim (about 10 s to train); shared by every test that needs a model."""
    from victim_service.train import train_victim

    out = tmp_path_factory.mktemp("victim") / "victim.pt"
    result = train_victim("digits", "cnn5", out, epochs=8, batch_size=64, lr=0.05, progress=False)
    assert result.test_accuracy > 0.9
    return out


@pytest.fixture
def quick_experiments(victim_checkpoint: Path) -> Path:
    """The experiments' cache (shared by the session's tests) holding the quick scale's victim:
    the session's victim fixture has the same recipe, so no experiment test trains another."""
    import shutil
    from dataclasses import asdict

    from scenarios.experiments.cache import cache_root, cached_path
    from scenarios.experiments.scale import QUICK_VICTIM

    path = cached_path("victims", asdict(QUICK_VICTIM), ".pt")
    if not path.exists():
        shutil.copy(victim_checkpoint, path)
    return cache_root()
