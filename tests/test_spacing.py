"""In-plane spacing: resampling to a target spacing and back, training at it, predicting on the source grid."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from hydra.utils import instantiate

from medseg.data.decode import load_image_meta
from medseg.data.spacing import resample_image, resample_labels, resampled_shape, to_spacing
from medseg.deploy.predictor import Predictor
from medseg.evaluation.evaluate import evaluate
from medseg.training.pipeline import train


@pytest.mark.parametrize("target", [0.625, 0.9, 1.0])
def test_a_label_volume_resampled_to_a_finer_spacing_and_back_is_unchanged(target):
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 4, size=(5, 37, 52), dtype=np.uint8)  # slices of 1.25 x 1.25 mm pixels
    shape = resampled_shape(volume.shape[1:], (1.25, 1.25), (target, target))
    assert shape == (round(37 * 1.25 / target), round(52 * 1.25 / target))
    back = np.stack([resample_labels(resample_labels(s, shape), s.shape) for s in volume])
    assert back.shape == volume.shape and np.array_equal(back, volume)


def test_images_resample_linearly_and_a_missing_spacing_is_named():
    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8, 1)
    assert resample_image(image, (16, 16)).shape == (16, 16, 1)
    with pytest.raises(ValueError, match=r"^scan\.png: no pixel spacing in the file, but data\.spacing=\[1\.0, 1\.0\]"):
        to_spacing(image, None, None, (1.0, 1.0), "scan.png")


def test_training_at_a_spacing_predicts_on_the_source_grid(make_cfg, demo_root, tmp_path):
    args = ["data.spacing=[2.0,2.0]", "data.size_policy=crop", "data.image_size=96", "model.log_images=false"]
    cfg = make_cfg([*args, "stage.stages.0.epochs=1", "trainer.limit_train_batches=2", "test=false"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    sample = dm.splits["val"][0]
    source, meta = load_image_meta(sample, 1)
    expected_shape = resampled_shape(source.shape, meta.pixel_spacing, (2.0, 2.0))
    assert expected_shape == (192, 192)  # the demo's 1.5 mm pixels at 2 mm
    loaded = dm.dataset("val").load(0)[0]
    assert loaded.shape == (96, 96, 1)  # resampled, then centre-cropped or padded to the training size
    train(cfg)
    predictor = Predictor(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert predictor.info.spacing == [2.0, 2.0] and predictor.info.size_policy == "crop"
    mask = predictor.segment(source, spacing=meta.pixel_spacing)
    assert mask.shape == source.shape[:2]  # mapped back to the file's grid
    evaluate(tmp_path / "run" / "checkpoints" / "best.ckpt", demo_root, tmp_path / "eval", worst=0)
    with open(tmp_path / "eval" / "cases.csv") as handle:
        assert {r["unit"] for r in csv.DictReader(handle)} == {"mm"}
