"""Experiment tracking: MLflow runs read back with MlflowClient, TensorBoard HPARAMS, epoch lines without a TTY."""

from __future__ import annotations

import re

import pytest
from omegaconf import open_dict
from tensorboard.plugins.hparams import plugin_data_pb2

from medseg.training.pipeline import train
from medseg.training.tracking import key_hyperparameters

from .helpers import run_train
from .test_train import read_events

SHORT = [
    "stage.stages.0.epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "data.image_size=64",
    "model.log_images=false",
]
NAME = " ".join(SHORT[:-1])  # what a run is named by: its overrides without the plumbing (image logging)


def test_mlflow_run_holds_the_config_and_the_metrics(make_cfg, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overrides = [
        "logger=[tensorboard,mlflow,csv]",
        f"logger.mlflow.tracking_uri={uri}",
        f"logger.mlflow.artifact_location={tmp_path / 'artifacts'}",
        "logger.mlflow.log_model=true",
        "logger.mlflow.system_metrics_interval=600",  # a run shorter than one interval still gets a sample
    ]
    cfg = make_cfg([*overrides, *SHORT], tmp_path / "run")
    _, metrics = train(cfg)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("train")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not MLflow 3's GenAI view
    (run,) = client.search_runs([experiment.experiment_id])
    params, logged = run.data.params, run.data.metrics
    assert params["model/net/encoder_name"] == "mobilenetv3" and params["data/image_size"] == "64"
    assert params["stage/stages/0/name"] == "full" and params["seed"] == "42"
    assert params["trainer/max_epochs"] == "2"  # the epochs that ran
    assert run.info.run_name == NAME  # named by what it changes, the plumbing left out
    # the config once: no Lightning copy under plain names, the stage schedule once
    top = set(cfg)
    assert {key.split("/", 1)[0] for key in params} <= top, sorted(params)[:5]
    assert [key for key in params if key.endswith("stages/0/epochs")] == ["stage/stages/0/epochs"]
    assert not [key for key in params if key.startswith(("net/", "loss/", "optimizer/", "callbacks/schedule/stages"))]
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "demo" and dataset.dataset.digest == run.data.tags["dataset_digest"]
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"
    assert any(key.startswith("system/cpu_utilization") for key in logged), sorted(logged)
    assert logged["val/dice_mean"] == pytest.approx(metrics["val/dice_mean"], abs=1e-6)
    assert logged["hparams/best_val_dice"] == pytest.approx(metrics["best/val/dice_mean"], abs=1e-6)
    assert logged["hparams/test_dice"] == pytest.approx(metrics["test/dice_mean"], abs=1e-6)
    history = client.get_metric_history(run.info.run_id, "val/dice_mean")
    assert len(history) == 2  # one value per epoch
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts
    for name in ("best", "last"):  # log_model=true: both checkpoints
        assert f"{name}/{name}.ckpt" in {a.path for a in client.list_artifacts(run.info.run_id, name)}
    assert (tmp_path / "run" / "csv" / "metrics.csv").read_text().count("val/dice_mean") == 1


def test_tensorboard_hparams_view_and_schedule_scalars(make_cfg, tmp_path):
    _, metrics = train(make_cfg(SHORT, tmp_path / "run"))
    events = read_events(tmp_path / "run" / "tensorboard")
    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = {k: v.string_value or v.number_value for k, v in session.session_start_info.hparams.items()}
    assert hparams["backbone"] == "mobilenetv3" and hparams["loss"] == "HybridLoss" and hparams["image_size"] == "64x64"
    assert hparams["bins"] == "1,3,5,7" and hparams["lr"] == pytest.approx(2e-3) and hparams["output_stride"] == 8
    assert hparams["encoder_depth"] == 3 and hparams["epochs"] == 2 and hparams["batch_size"] == 8
    assert hparams["seed"] == 42 and hparams["dataset"] == "demo"
    # the trial is the run folder and what the run changed, not a cut-off date
    assert session.session_start_info.group_name == f"run: {NAME}"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"hparams/best_val_dice", "hparams/test_dice"}
    best = events.Scalars("hparams/best_val_dice")[0].value
    assert best == pytest.approx(metrics["best/val/dice_mean"], abs=1e-6)
    scalars = set(events.Tags()["scalars"])
    assert {"val/dice_best", "time/epoch_s", "time/img_per_s", "val/dice_mean"} <= scalars  # two foreground classes
    running = [e.value for e in events.Scalars("val/dice_mean")]
    best = [e.value for e in events.Scalars("val/dice_best")]
    assert best == pytest.approx([max(running[: i + 1]) for i in range(len(running))], abs=1e-6)
    assert all(e.value > 0 for e in events.Scalars("time/img_per_s"))
    assert {"schedule/stage", "schedule/data_fraction", "schedule/aug_strength", "lr-AdamW"} <= scalars
    assert not [t for t in scalars if t.startswith("lr") and t != "lr-AdamW"]


def test_hparams_summary_of_a_network_without_pspnet_settings(make_cfg):
    cfg = make_cfg(["data.image_size=[48,64]"])
    with open_dict(cfg):
        cfg.model.net = {"_target_": "my_lab.nets.unet", "in_channels": 1}  # a user's own network
    hparams = key_hyperparameters(cfg)
    assert hparams["backbone"] == "my_lab.nets.unet" and hparams["image_size"] == "48x64"
    assert hparams["bins"] == "" and hparams["output_stride"] == "" and hparams["encoder_depth"] == ""
    with open_dict(cfg):
        cfg.model.net = {"_target_": "medseg.models.PSPNet", "encoder_name": "resnet18", "encoder_depth": None}
    assert key_hyperparameters(cfg, encoder_depth=5)["encoder_depth"] == 5  # all of resnet18's stages


@pytest.mark.slow
def test_runs_without_a_terminal_log_one_line_per_epoch(cache_dir, tmp_path):
    run_train([*SHORT, "stage.stages.0.epochs=3", f"hydra.run.dir={tmp_path}"], cache_dir)
    lines = [line for line in (tmp_path / "train.log").read_text().splitlines() if "medseg.progress" in line]
    pattern = re.compile(
        r"epoch (\d)/3 stage full train_loss [\d.]+ val_dice [\d.]+ lr [\d.e-]+ epoch \d+s elapsed [\d:]+ eta [\d:]+$"
    )
    assert [int(pattern.search(line).group(1)) for line in lines] == [1, 2, 3], lines


@pytest.mark.parametrize("order", ["[mlflow,tensorboard]", "[tensorboard,mlflow]"])
def test_the_image_grid_reaches_every_logger_in_any_order(make_cfg, tmp_path, order):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overrides = [
        f"logger={order}",
        f"logger.mlflow.tracking_uri={uri}",
        f"logger.mlflow.artifact_location={tmp_path}/a",
    ]
    short = [o for o in SHORT if o != "model.log_images=false"] + ["test=false"]
    train(make_cfg([*overrides, *short], tmp_path / "run"))
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    images = [a.path for a in client.list_artifacts(run.info.run_id, "val/prediction")]
    assert len(images) == 2 and all(p.endswith(".png") for p in images), images  # one per validation
    assert "val/prediction" in read_events(tmp_path / "run" / "tensorboard").Tags()["images"]


def test_a_one_class_run_charts_no_mean_that_repeats_the_class(make_cfg, tmp_path):
    one_class = ["data.class_names=[background,organ]", "data.mask_mapping={1:1,2:1}"]
    _, metrics = train(make_cfg([*SHORT, *one_class], tmp_path / "run"))
    scalars = set(read_events(tmp_path / "run" / "tensorboard").Tags()["scalars"])
    assert {"val/dice_organ", "val/dice_best", "test/dice_organ"} <= scalars
    assert not {"val/dice_mean", "test/dice_mean", "val/iou_mean"} & scalars
    # still monitored: the best checkpoint and the returned metrics use it
    assert metrics["best/val/dice_mean"] == pytest.approx(metrics["val/dice_best"], abs=1e-6)
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()


def test_max_epochs_below_the_schedule_names_the_stage_it_cuts(make_cfg):
    from medseg.config import schedule_cut

    assert schedule_cut(make_cfg(["stage=progressive"])) is None
    cut = schedule_cut(make_cfg(["stage=progressive", "trainer.max_epochs=15"]))
    assert cut == "trainer.max_epochs=15 cuts stage.stages.1 (2) after 3 of its 10 epochs; stages 3 do not run"
    longer = schedule_cut(make_cfg(["trainer.max_epochs=30"]))
    assert longer == "trainer.max_epochs=30 runs the last stage (full) 5 epochs longer"
