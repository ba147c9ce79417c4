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


@pytest.fixture(scope="session")
def victim_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cnn5 digits victim (about 10 s to train); shared by every test that needs a model."""
    from victim_service.train import train_victim

    out = tmp_path_factory.mktemp("victim") / "victim.pt"
    result = train_victim("digits", "cnn5", out, epochs=8, batch_size=64, lr=0.05, progress=False)
    assert result.test_accuracy > 0.9
    return out
