"""Where the project finds handed-in archives and keeps its caches (one home for these settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class DataSettings(BaseSettings):
    """`TESTBED_DATA_DIR`, `TESTBED_CACHE_DIR`, `TESTBED_DOWNLOAD`, `TESTBED_KEEP_POOLS`,
    `TESTBED_EXPERIMENTS_CACHE_DIR` from the environment."""

    model_config = SettingsConfigDict(env_prefix="TESTBED_")

    data_dir: Path = PROJECT_ROOT.parent / "shared" / "data"
    cache_dir: Path = Path.home() / ".cache" / "extraction-testbed"
    download: bool = False
    keep_pools: bool = True
    """Keep the `natural` pools' images on disk once made (`cache_dir/pools`), so that the next
    query, resume, export or training of the same seeded pool reads them back."""
    experiments_cache_dir: Path = Path("runs/cache")
    """Victims, transfer sets and knockoffs of the experiments, by config hash (relative paths
    are under the working folder); point several checkouts at one folder to share them."""


def data_settings() -> DataSettings:
    return DataSettings()
