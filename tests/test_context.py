"""Neighbouring-slice context: stacks equal to the decoded neighbours, edges replicated, the same through the
data module, medseg-prepare, ONNX export, medseg-eval and medseg-predict."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hydra.utils import instantiate

from medseg.data.context import series_stacks, stack_indices
from medseg.deploy.export import export_checkpoint
from medseg.deploy.predict import predict
from medseg.deploy.predictor import Predictor
from medseg.deploy.quantize import quantize_checkpoint_model
from medseg.evaluation.evaluate import evaluate
from medseg.training.pipeline import train

from .helpers import REPO

SHORT = ["data.image_size=64", "stage.stages.0.epochs=1", "trainer.limit_train_batches=2", "model.log_images=false"]


def test_stack_indices_replicate_the_edges():
    assert stack_indices(4, 1) == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert stack_indices(1, 2) == [[0, 0, 0, 0, 0]]


def test_a_batch_holds_the_neighbouring_decoded_slices_of_the_same_series(make_cfg):
    cfg = make_cfg([*SHORT, "data.context_slices=1"])
    assert cfg.model.net.in_channels == 3
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    dataset = dm.dataset("val")
    samples = dataset.samples
    series = samples[0].series
    members = sorted((i for i, s in enumerate(samples) if s.series == series), key=lambda i: samples[i].slice_index)
    assert len(members) == 8 and series
    for z, i in enumerate(members):
        image = dataset[i]["image"]
        assert image.shape == (3, 64, 64)
        below, above = members[max(z - 1, 0)], members[min(z + 1, len(members) - 1)]
        for channel, j in enumerate((below, i, above)):
            decoded = torch.from_numpy(dataset.load(j)[0][..., 0])
            assert torch.equal(image[channel], decoded), (z, channel)
    first = dataset[members[0]]["image"]
    assert torch.equal(first[0], first[1])  # the first slice is its own lower neighbour
    assert series_stacks(samples, 0) == [(s,) for s in samples]


@pytest.fixture(scope="module")
def context_checkpoint(cache_dir, tmp_path_factory):
    """A short demo run with one neighbouring slice on each side."""
    from medseg.config import compose_config

    out = tmp_path_factory.mktemp("context")
    cfg = compose_config(
        [*SHORT, "data.context_slices=1", "test=false", "callbacks.progress_bar=null", f"paths.cache_dir={cache_dir}"],
        out,
    )
    train(cfg)
    return out / "checkpoints" / "best.ckpt"


def test_the_onnx_model_takes_three_channels_and_matches_pytorch(context_checkpoint, tmp_path):
    path, errors = export_checkpoint(context_checkpoint, tmp_path / "model.onnx")
    assert max(errors) < 1e-4  # parity with PyTorch at several sizes
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3
    onnx_model, torch_model = Predictor(path), Predictor(context_checkpoint)
    assert onnx_model.info.context_slices == 1 and onnx_model.info.input_channels == 3
    images = [np.random.default_rng(i).random((64, 64, 1), dtype=np.float32) for i in range(3)]
    batch = np.concatenate(images, axis=-1).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(onnx_model.logits(batch), torch_model.logits(batch), atol=1e-4)
    report = quantize_checkpoint_model(context_checkpoint, path, tolerance=1.0, calibration_batches=2)
    assert Predictor(report.path).info.context_slices == 1  # calibrated and gated on 3-channel stacks


def test_eval_and_predict_feed_the_same_stacks(context_checkpoint, demo_root, tmp_path):
    evaluate(context_checkpoint, demo_root, tmp_path / "eval", worst=0)
    with open(tmp_path / "eval" / "cases.csv") as handle:
        assert len({r["case"] for r in csv.DictReader(handle)}) == 12  # one case per series
    series = sorted((demo_root / "images").iterdir())[0]
    written = predict(context_checkpoint, series, tmp_path / "pred", nifti=True)
    assert any(p.name.endswith(".nii.gz") for p in written) and any(p.suffix == ".dcm" for p in written)


PORTABLE_RUN = """
import json, sys
import cv2, torch
cv2.setUseOptimized(False)  # OpenCV's plain code, not its per-CPU SIMD paths
torch.set_num_threads(1)  # float sums, and so the numbers, depend on the thread count
torch.backends.mkldnn.enabled = False  # oneDNN picks kernels by CPU
from medseg.config import compose_config
from medseg.training.pipeline import train
overrides = ["stage.stages.0.epochs=8", "data.image_size=64", "model.log_images=false", "callbacks.progress_bar=null"]
_, metrics = train(compose_config([*overrides, *sys.argv[3:], "paths.cache_dir=" + sys.argv[1]], sys.argv[2]))
print(json.dumps({k: float(metrics[k]) for k in ("val/dice_mean", "test/dice_mean", "test/dice_lesion")}))
"""
# ATen's scalar kernels and MKL's compatible code path: the same floating-point operations on every x86-64 CPU
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}


RELEASE_0_2_0 = "f0fcb7e"  # the last commit before series, context slices and per-volume scores


def _portable_run(code: Path, cache_dir: Path, out: Path, *extra: str) -> dict[str, float]:
    """The demo's 8-epoch 2-D run with the medseg package of CODE (and EXTRA overrides), on CPU-independent kernels;
    its test metrics."""
    env = {**os.environ, **PORTABLE_ENV, "MEDSEG_CACHE": str(cache_dir), "PYTHONPATH": str(code)}
    command = [sys.executable, "-c", PORTABLE_RUN, str(cache_dir), str(out), *extra]
    result = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_2d_run_gives_the_numbers_it_gave_before_volumes(tmp_path):
    # context_slices=0 must reproduce exactly what 0.2.0's code scores on this machine with these dependencies
    # (the numbers themselves move with the CPU and the dependencies' releases)
    git = ["git", "-C", str(REPO)]
    if subprocess.run([*git, "cat-file", "-e", f"{RELEASE_0_2_0}^{{commit}}"], capture_output=True).returncode:
        pytest.skip("0.2.0's code comes from the git history, which this checkout lacks")
    release = tmp_path / "0.2.0"
    release.mkdir()
    archive = subprocess.run([*git, "archive", RELEASE_0_2_0], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(release)], input=archive.stdout, check=True)
    # each run generates and decodes the demo with its own code, in a cache of its own
    expected = _portable_run(release, tmp_path / "cache_0.2.0", tmp_path / "run_0.2.0")
    # 0.2.0 had the window scheme only; normalize=auto is today's default
    assert _portable_run(REPO, tmp_path / "cache", tmp_path / "run", "data.normalize=window") == expected


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.context_slices=-1", "data.context_slices: expected an integer from 0 to 8, got -1"),
        ("data.spacing=[1.0]", "data.spacing: expected null or [row_mm, col_mm], two positive numbers, got [1.0]"),
    ],
)
def test_volume_settings_are_checked_before_anything_is_decoded(make_cfg, override, message):
    from medseg.config import validate_config

    with pytest.raises(ValueError) as error:
        validate_config(make_cfg([override]))
    assert str(error.value) == message
