"""Training through the real Hydra config tree: fast_dev_run per backbone, run-folder contents, CLI errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medseg.config import validate_config
from medseg.deploy.views import check_tta
from medseg.models.encoder import BACKBONES
from medseg.postprocess import class_indices
from medseg.training.pipeline import train

from .conftest import CXR_LUNG, requires_cxr_lung
from .helpers import REPO


def read_events(folder: Path) -> EventAccumulator:
    """Load every scalar and image of a TensorBoard log folder."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_fast_dev_run_every_backbone(make_cfg, backbone):
    cfg = make_cfg([f"backbone={backbone}", "debug=[fdr,tiny]", "data.batch_size=2"])
    assert cfg.model.net.encoder_name == backbone
    _, metrics = train(cfg)
    assert "train/loss_epoch" in metrics or "train/loss" in metrics


def test_bf16_mixed_precision_trains_on_cpu(make_cfg):
    cfg = make_cfg(["trainer.precision=bf16-mixed", "trainer.fast_dev_run=true", "data.image_size=64"])
    _, metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"])


def test_short_run_writes_config_split_checkpoint_and_events(make_cfg, tmp_path):
    cfg = make_cfg(
        [
            "stage.stages.0.epochs=2",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=2",
            "data.image_size=64",
        ],
        output_dir=tmp_path / "run",
    )
    metric, metrics = train(cfg)
    run = tmp_path / "run"
    assert (run / "split.json").is_file()
    resolved = (run / "config.yaml").read_text()
    assert "encoder_name: mobilenetv3" in resolved and "${" not in resolved
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert metric == pytest.approx(metrics["best/val/dice_mean"]) and metric >= metrics["val/dice_mean"]
    assert 0.0 <= metrics["test/dice_mean"] <= 1.0
    assert 0.0 <= metrics["test/volume_dice_mean"] <= 1.0 and 0.0 <= metrics["test/volume_nsd_organ"] <= 1.0
    events = read_events(run / "tensorboard")
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_epoch", "val/loss", "val/dice_mean", "val/dice_organ", "val/dice_lesion", "lr-AdamW"} <= scalars
    assert len(events.Scalars("val/dice_mean")) == 2
    assert {"test/volume_dice_organ", "test/volume_hd95_organ", "test/volume_nsd_lesion"} <= scalars
    images = events.Tags()["images"]
    assert "val/prediction" in images
    image = events.Images("val/prediction")[0]
    assert image.width == 3 * 64 and image.height >= 64


@pytest.mark.slow
def test_unknown_backbone_lists_options_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "backbone=nope", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Available options in 'backbone'" in result.stderr
    for name in BACKBONES:
        assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_auto_class_weights_come_from_training_masks(make_cfg):
    from hydra.utils import instantiate

    from medseg.losses import inverse_frequency_weights

    cfg = make_cfg(["model.class_weights=auto", "trainer.fast_dev_run=true", "data.image_size=64", "data.batch_size=2"])
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _recursive_=False)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    trainer.fit(model, datamodule=datamodule)
    expected = inverse_frequency_weights(datamodule.class_pixel_counts())
    assert torch.allclose(model.class_weights, expected)
    assert model.class_weights[2] > model.class_weights[1] > model.class_weights[0]  # lesion rarest
    assert torch.equal(model.criterion.dice.class_weights, model.class_weights)


def test_experiment_settings_override_the_main_config(make_cfg):
    cfg = make_cfg(["experiment=cxr_lung_scratch"])
    assert cfg.model.scheduler._target_ == "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert [s.name for s in cfg.stage.stages] == ["full"] and cfg.trainer.max_epochs == cfg.stage.stages[0].epochs
    assert cfg.data.layout == "folder" and cfg.data.image_size == 256 and cfg.model.channels_last
    assert cfg.model.net.encoder_depth is None  # the full encoder of the documented cxr_lung rows


def test_default_network_uses_the_first_three_encoder_stages(make_cfg):
    cfg = make_cfg([])
    net = instantiate(cfg.model.net)
    assert cfg.model.net.encoder_depth == 3 and net.encoder.output_stride == 8
    assert sum(p.numel() for p in net.parameters()) < 1e6  # mobilenetv3's full encoder alone holds ~3M


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_composes_to_a_network_that_keeps_the_input_size(make_cfg, experiment, request):
    streamed = ["data.root=" + str(request.getfixturevalue("prepared"))] if experiment == "hn_ct" else []
    cfg = make_cfg([f"experiment={experiment}", *streamed])
    assert cfg.trainer.max_epochs == sum(s.epochs for s in cfg.stage.stages)
    net = instantiate(cfg.model.net).eval()
    with torch.no_grad():  # context slices: 2k+1 stacked slices
        assert net(torch.zeros(1, cfg.model.net.in_channels, 65, 63)).shape[-2:] == (65, 63)
    if experiment == "cxr_lung_fast":  # the documented most-Dice-per-CPU-minute network and schedule
        assert cfg.model.net.encoder_depth == 3 and cfg.callbacks.ema.multi_avg_fn.decay == 0.99
        assert [s.get("image_size") for s in cfg.stage.stages] == [128, None] and cfg.data.batch_size == 4
        assert class_indices(cfg.model.keep_largest, cfg.data.class_names) == {1: 2}  # two lungs, holes filled
        assert check_tta(cfg.model.tta) == ["scale1.25"]  # the plain pass averaged with one at 1.25x
    validate_config(cfg)


@pytest.mark.slow  # a short training run on real X-rays
@requires_cxr_lung()
def test_cxr_lung_experiment_trains_a_few_batches(make_cfg, tmp_path):
    cfg = make_cfg(
        [
            "experiment=cxr_lung",
            f"data.root={CXR_LUNG}",
            "data.image_size=64",
            "stage.stages.0.epochs=1",
            "stage.stages.1.epochs=0",
            "stage.stages.2.epochs=0",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2",
            "model.log_images=false",
        ],
        tmp_path / "cxr",
    )
    assert cfg.data.layout == "folder" and cfg.data.in_channels == 1 and cfg.data.mask_threshold == 128
    assert [s.lr for s in cfg.stage.stages] == [1e-4, 5e-5, 1e-5]
    metric, metrics = train(cfg)
    assert 0.0 <= metrics["test/dice_lung"] <= 1.0 and metric is not None
    split = (tmp_path / "cxr" / "split.json").read_text()
    assert "CHNCXR" not in split and "MCUCXR" not in split  # image paths and patients as keyed pseudonyms
    assert all(len(json.loads(split)["splits"][k]) > 0 for k in ("train", "val", "test"))


@pytest.mark.slow  # two short training runs on real X-rays
@requires_cxr_lung()
def test_site_transfer_experiments_compose_and_run_a_few_batches(make_cfg, tmp_path):
    few = [
        f"data.root={CXR_LUNG}",
        "data.image_size=64",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "model.log_images=false",
    ]
    source = make_cfg(["experiment=cxr_transfer_source", "stage.stages.0.epochs=1", *few], tmp_path / "source")
    assert source.data.include_regex == "^CHNCXR_" and source.stage.stages[0].lr == 2e-3
    train(source)
    best = tmp_path / "source" / "checkpoints" / "best.ckpt"
    epochs = ["stage.stages.0.epochs=1", "stage.stages.1.epochs=1", "stage.stages.2.epochs=0"]
    target = make_cfg(["experiment=cxr_transfer_target", f"init_from={best}", *epochs, *few], tmp_path / "target")
    assert target.data.include_regex == "^MCUCXR_" and [s.lr for s in target.stage.stages] == [1e-4, 5e-5, 1e-5]
    _, metrics = train(target)
    assert 0.0 <= metrics["test/dice_lung"] <= 1.0
    split = json.loads((tmp_path / "target" / "split.json").read_text())["splits"]
    assert sum(len(v) for v in split.values()) == 138  # Montgomery only
    constant = make_cfg(["experiment=cxr_transfer_target", f"init_from={best}", "stage=finetune", *few])
    assert [(s.name, s.lr, s.epochs) for s in constant.stage.stages] == [("finetune", 1e-4, 32)]
