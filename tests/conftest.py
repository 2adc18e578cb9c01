"""Shared fixtures: the demo dataset in a temporary cache and Hydra composition of the real config tree."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from medseg.config import compose_config
from medseg.data.synthetic import ensure_demo_dataset

from .helpers import REPO

CXR_LUNG = REPO.parent / "shared" / "data" / "cxr_lung"

# The tests' own pseudonymisation secret, never the user's: a key file in a fresh temporary folder, removed with
# the folder when the test process exits.
os.environ.pop("MEDSEG_SECRET", None)
_KEY_DIR = tempfile.TemporaryDirectory(prefix="medseg-key-")
os.environ["MEDSEG_KEY_FILE"] = str(Path(_KEY_DIR.name) / "secret.key")


def pytest_configure(config) -> None:
    """Under pytest-xdist, share the cores among the workers (and the train.py runs they start)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items) -> None:
    """Tests of the trained demo checkpoint run on one xdist worker, which trains it once."""
    for item in items:
        if "demo_checkpoint" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("demo_checkpoint"))


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


@pytest.fixture(scope="session")
def prepared(demo_root, tmp_path_factory) -> Path:
    """The demo dataset prepared at 64 px with two workers."""
    from medseg.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "demo"
    prepare(demo_root, out, workers=2, image_size=64)
    return out


@pytest.fixture
def make_cfg(cache_dir, tmp_path):
    """Compose conf/config.yaml with overrides, as train.py would, writing into tmp_path."""

    def _make(overrides: list[str] | None = None, output_dir: Path | None = None):
        out = Path(output_dir or tmp_path / "run")
        out.mkdir(parents=True, exist_ok=True)
        cfg = compose_config([*(overrides or []), "callbacks.progress_bar=null", f"paths.cache_dir={cache_dir}"], out)
        return cfg

    yield _make
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def demo_checkpoint(cache_dir, tmp_path_factory) -> Path:
    """A mobilenetv3 PSPNet trained briefly on the demo data (64 px)."""
    out = tmp_path_factory.mktemp("trained")
    cfg = compose_config(
        [
            "stage.stages.0.epochs=8",
            "data.image_size=64",
            "test=false",
            "model.log_images=false",
            "callbacks.progress_bar=null",
            f"paths.cache_dir={cache_dir}",
        ],
        out,
    )
    from medseg.training.pipeline import train

    train(cfg)
    return out / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="session")
def node_model(cache_dir, tmp_path_factory) -> Path:
    """An ONNX model exported from a short demo run."""
    from medseg.deploy.export import export_checkpoint
    from medseg.training.pipeline import train

    out = tmp_path_factory.mktemp("node-model")
    overrides = ["data.image_size=64", "stage.stages.0.epochs=1", "trainer.limit_train_batches=2", "test=false"]
    overrides += ["model.log_images=false", "callbacks.progress_bar=null", f"paths.cache_dir={cache_dir}"]
    train(compose_config(overrides, out))
    path, _ = export_checkpoint(out / "checkpoints" / "best.ckpt", out / "abdomen.onnx")
    return path


def requires_cxr_lung():
    """Skip marker for tests that need ../shared/data/cxr_lung."""
    return pytest.mark.skipif(not (CXR_LUNG / "images").is_dir(), reason=f"{CXR_LUNG} not present")
