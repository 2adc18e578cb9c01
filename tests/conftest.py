"""Shared fixtures: the demo dataset in a temporary cache and Hydra composition of the real config tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from medseg.config import CONFIG_DIR, quote_numeric_options
from medseg.data.synthetic import ensure_demo_dataset

REPO = Path(__file__).resolve().parent.parent
CXR_LUNG = REPO.parent / "shared" / "data" / "cxr_lung"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A private MEDSEG_CACHE holding the demo dataset, generated once per session."""
    path = tmp_path_factory.mktemp("medseg-cache")
    os.environ["MEDSEG_CACHE"] = str(path)
    ensure_demo_dataset(path)
    return path


@pytest.fixture(scope="session")
def demo_root(cache_dir) -> Path:
    """Root of the generated demo DICOM dataset."""
    return ensure_demo_dataset(cache_dir)


@pytest.fixture
def make_cfg(cache_dir, tmp_path):
    """Compose conf/config.yaml with overrides, as train.py would, writing into tmp_path."""

    def _make(overrides: list[str] | None = None, output_dir: Path | None = None):
        GlobalHydra.instance().clear()
        out = Path(output_dir or tmp_path / "run")
        out.mkdir(parents=True, exist_ok=True)
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("config", overrides=quote_numeric_options(overrides or []), return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
            cfg.paths.cache_dir = str(cache_dir)
            cfg.callbacks.progress_bar = None
            del cfg["hydra"]  # as in a @hydra.main app, where only HydraConfig holds it
        return cfg

    yield _make
    GlobalHydra.instance().clear()


def requires_cxr_lung():
    """Skip marker for tests that need ../shared/data/cxr_lung."""
    return pytest.mark.skipif(not (CXR_LUNG / "images").is_dir(), reason=f"{CXR_LUNG} not present")
