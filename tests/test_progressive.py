"""The progressive schedule end to end: logged LR/data/augmentation per epoch, kill-and-resume, stage init."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from medseg.training.callbacks.epoch_log import remaining_seconds
from medseg.training.pipeline import train

from .helpers import kill_when, run_train, start_train
from .test_train import read_events

FAST = ["data.image_size=64", "trainer.limit_val_batches=1", "test=false", "model.log_images=false"]


def per_epoch(events, tag: str) -> list[tuple[int, float]]:
    """(global step, value) of an epoch-level scalar, in order."""
    return [(e.step, round(e.value, 8)) for e in events.Scalars(tag)]


def test_progressive_schedule_is_logged_epoch_by_epoch(make_cfg, tmp_path, caplog):
    cfg = make_cfg(["stage=progressive", *(f"stage.stages.{i}.epochs=2" for i in range(3)), *FAST], tmp_path / "run")
    assert cfg.trainer.max_epochs == 6
    with caplog.at_level(logging.INFO, logger="medseg.progress"):
        train(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "medseg.progress"]
    assert [line.split()[1:4] for line in lines[::2]] == [
        ["1/6", "stage", "1"],
        ["3/6", "stage", "2"],
        ["5/6", "stage", "3"],
    ]
    assert lines[-1].endswith("eta 0:00:00")
    events = read_events(tmp_path / "run" / "tensorboard")
    lrs = [v for _, v in per_epoch(events, "lr-AdamW")]  # one learning-rate curve
    assert lrs == [1e-4, 1e-4, 5e-5, 5e-5, 1e-5, 1e-5]
    fractions = [v for _, v in per_epoch(events, "schedule/data_fraction")]
    assert fractions == pytest.approx([0.2, 0.2, 0.6, 0.6, 1.0, 1.0])
    assert [v for _, v in per_epoch(events, "schedule/aug_strength")] == [1, 1, 2, 2, 3, 3]  # low, mid, high
    assert [v for _, v in per_epoch(events, "schedule/stage")] == [1, 1, 2, 2, 3, 3]
    assert not {"lr", "stage", "data_fraction", "aug_strength"} & set(events.Tags()["scalars"])
    # 8 training patients x 8 slices, batch 8, drop_last: 20% -> 2 patients -> 2 batches; 60% -> 5; 100% -> 8.
    steps = [s for s, _ in per_epoch(events, "schedule/stage")]
    # Epoch-level values are logged at the epoch's last step (global_step - 1).
    batches = [b - a for a, b in zip([-1, *steps], steps, strict=False)]
    assert batches == [2, 2, 5, 5, 8, 8]


def test_eta_scales_a_stage_not_run_yet_by_its_pixels_and_data():
    # stage 0 ran 2 epochs of 3 s, 1 s of each validating; stage 1 has 4x its cost, stage 2 half of stage 1's
    cost = [1.0, 4.0, 2.0]
    assert remaining_seconds({0: 6.0}, {0: 2}, 1.0, [0, 1, 1, 2], cost) == pytest.approx(
        3 + 2 * (2 * 4 + 1) + (2 * 2 + 1)
    )
    # once stage 1 has run, its own epoch time counts, and stage 2 scales from it
    assert remaining_seconds({0: 6.0, 1: 20.0}, {0: 2, 1: 1}, 1.0, [1, 2], cost) == pytest.approx(20 + (19 / 2 + 1))


def _stage_of(checkpoint: Path) -> tuple[int | None, int]:
    """(schedule stage index, index of the next epoch to run) saved in a checkpoint."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception:  # absent or still being written
        return None, 0
    stage = next(v["stage_index"] for k, v in state["callbacks"].items() if "ProgressiveSchedule" in k)
    return stage, state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]


@pytest.mark.slow
def test_killed_progressive_run_resumes_in_stage_two(cache_dir, tmp_path):
    run = tmp_path / "killed"
    args = [
        "stage=progressive",
        "stage.stages.0.epochs=1",
        "stage.stages.1.epochs=30",
        "stage.stages.2.epochs=1",
        *FAST,
        "callbacks.progress_bar=null",
    ]
    last = run / "checkpoints" / "last.ckpt"
    proc = start_train([*args, f"hydra.run.dir={run}"], cache_dir)
    assert kill_when(proc, lambda: _stage_of(last)[0] == 1, poll=0.5), "the run ended before it was killed"
    stage, next_epoch = _stage_of(last)
    assert stage == 1 and 2 <= next_epoch < 31
    resumed = tmp_path / "resumed"
    run_train(
        [*args, f"hydra.run.dir={resumed}", f"ckpt_path={last}", f"trainer.max_epochs={next_epoch + 1}"], cache_dir
    )
    events = read_events(resumed / "tensorboard")
    stages = [v for _, v in per_epoch(events, "schedule/stage")]
    lrs = [v for _, v in per_epoch(events, "lr-AdamW")]
    assert stages == [2] and lrs == [5e-5]
    assert "stage 2: lr 5e-05" in (resumed / "train.log").read_text()


def test_stage_two_from_stage_one_checkpoint_freezes_the_encoder(make_cfg, tmp_path, caplog):
    train(make_cfg(["stage=1", "stage.stages.0.epochs=1", *FAST], tmp_path / "s1"))
    init = tmp_path / "s1" / "checkpoints" / "last.ckpt"
    before = torch.load(init, map_location="cpu", weights_only=True)["state_dict"]
    train(make_cfg(["stage=2", "stage.stages.0.epochs=2", f"init_from={init}", *FAST], tmp_path / "s2"))
    after = torch.load(tmp_path / "s2" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    encoder = [k for k in before if k.startswith("net.encoder.")]
    head = [
        k for k in before if k.startswith(("net.decoder.", "net.segmentation_head.")) and before[k].is_floating_point()
    ]
    assert encoder and head
    for key in encoder:  # weights and BatchNorm running statistics unchanged
        torch.testing.assert_close(after[key], before[key], msg=key)
    assert sum(not torch.equal(after[k], before[k]) for k in head) > len(head) // 2
    fresh = make_cfg(["stage=2", *FAST], tmp_path / "fresh")
    from hydra.utils import instantiate

    untrained = instantiate(fresh.model, _recursive_=False).state_dict()
    assert any(not torch.equal(untrained[k], before[k]) for k in encoder), "encoder weights did not come from the file"
    caplog.clear()
    train(make_cfg(["stage=2", "stage.stages.0.epochs=1", "trainer.limit_train_batches=1", *FAST], tmp_path / "noinit"))
    warnings = [r.getMessage() for r in caplog.records if "without init_from" in r.getMessage()]
    assert len(warnings) == 1 and "freezes ['encoder']" in warnings[0]  # judged by what the stage trains


def test_cosine_schedule_restarts_and_spans_each_stage(make_cfg, tmp_path):
    cosine = "{_target_:torch.optim.lr_scheduler.CosineAnnealingLR,_partial_:true,T_max:1}"
    stages = ["stage.stages.0.epochs=3", "stage.stages.1.epochs=3", "stage.stages.2.epochs=0"]
    cfg = make_cfg(["stage=progressive", *stages, f"model.scheduler={cosine}", *FAST, "trainer.limit_train_batches=1"])
    train(cfg)
    lrs = [v for _, v in per_epoch(read_events(Path(cfg.paths.output_dir) / "tensorboard"), "lr-AdamW")]
    shape = [1.0, 0.75, 0.25]  # (1 + cos(pi * t / 3)) / 2 for t = 0, 1, 2
    assert lrs == pytest.approx([1e-4 * s for s in shape] + [5e-5 * s for s in shape], rel=1e-6)


def test_single_stage_configs_equal_the_progressive_entries(make_cfg):
    stages = make_cfg(["stage=progressive"]).stage.stages
    for i, name in enumerate(("1", "2", "3")):
        (single,) = make_cfg([f"stage={name}"]).stage.stages
        assert single == stages[i], name


def test_warmup_cosine_warms_up_then_decays_and_restarts_each_stage(make_cfg, tmp_path):
    schedule = "{_target_:medseg.schedulers.WarmupCosineLR,_partial_:true,T_max:1,warmup_epochs:1}"
    stages = ["stage.stages.0.epochs=4", "stage.stages.1.epochs=4", "stage.stages.2.epochs=0"]
    overrides = [f"model.scheduler={schedule}", *FAST, "trainer.limit_train_batches=1"]
    cfg = make_cfg(["stage=progressive", *stages, *overrides, "test=true", "trainer.limit_test_batches=1"])
    _, metrics = train(cfg)
    assert "test/dice_mean" in metrics  # its best checkpoint, naming medseg's scheduler, loads for the test
    lrs = [v for _, v in per_epoch(read_events(Path(cfg.paths.output_dir) / "tensorboard"), "lr-AdamW")]
    shape = [0.5, 1.0, 0.75, 0.25]  # warm-up epoch at base / 2, then (1 + cos(pi * t / 3)) / 2 for t = 0, 1, 2
    assert lrs == pytest.approx([1e-4 * s for s in shape] + [5e-5 * s for s in shape], rel=1e-6)


def test_low_resolution_stage_trains_on_smaller_images_and_validates_at_full_size(make_cfg, tmp_path, caplog):
    from types import SimpleNamespace

    from hydra.utils import instantiate

    from medseg.training.callbacks import ProgressiveSchedule

    stages = ["stage.stages.0.epochs=1", "+stage.stages.0.image_size=32", "stage.stages.1.epochs=1"]
    cfg = make_cfg(["stage=progressive", *stages, "stage.stages.2.epochs=0", *FAST, "trainer.limit_train_batches=2"])
    with caplog.at_level("INFO", logger="medseg"):
        train(cfg)
    events = read_events(Path(cfg.paths.output_dir) / "tensorboard")
    assert [v for _, v in per_epoch(events, "schedule/image_height")] == [32, 64]
    assert "images 32x32" in caplog.text
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    schedule = ProgressiveSchedule(cfg.stage.stages)
    shapes = []
    for epoch in (0, 1):  # what the callback sets for each stage's epochs, as the loaders see it
        schedule._apply_data(SimpleNamespace(datamodule=datamodule), epoch)
        batch = next(iter(datamodule.train_dataloader()))
        assert set(batch["mask"].unique().tolist()) <= set(range(len(cfg.data.class_names)))
        shapes.append((tuple(batch["image"].shape[-2:]), tuple(batch["mask"].shape[-2:])))
    assert shapes == [((32, 32), (32, 32)), ((64, 64), (64, 64))]
    assert next(iter(datamodule.val_dataloader()))["image"].shape[-2:] == (64, 64)
