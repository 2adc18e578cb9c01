"""Sweeps and reports, simulated DDP, the SLURM launcher config, Optuna, kill-and-resume, reproducibility."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from PIL import Image

from medseg.config import CONFIG_DIR
from medseg.evaluation.report import fold_table
from medseg.evaluation.report import main as report_main
from medseg.training.module import module_from_checkpoint
from medseg.training.pipeline import train

from .helpers import kill_when, run_train, start_train

TINY = ["debug=tiny"]


def test_fold_table_gives_mean_and_std_per_configuration():
    records = [
        dict(job=i, overrides=[f"data.fold={i % 3}", f"backbone={b}"], val_dice=v, test_dice=t)
        for i, (b, v, t) in enumerate(
            [
                ("mobilenetv3", 0.90, 0.80),
                ("mobilenetv3", 0.92, 0.82),
                ("mobilenetv3", 0.94, 0.84),
                ("resnet18", 0.5, None),
            ]
        )
    ]
    table = fold_table(records).splitlines()
    assert table[2] == "| backbone=mobilenetv3 | 3 | 0.9200 +- 0.0200 | 0.8200 +- 0.0200 |"
    assert table[3] == "| backbone=resnet18 | 1 | 0.5000 +- 0.0000 | n/a |"
    assert fold_table([dict(job=0, overrides=["backbone=resnet18"], val_dice=0.5)]) == ""


def test_fold_table_counts_a_resumed_or_rerun_fold_once_in_its_configuration():
    common, resume = ["data.num_folds=3", "callbacks.progress_bar=null"], "ckpt_path=/runs/fold1/last.ckpt"
    records = [
        dict(job=0, overrides=[*common, "data.fold=0"], val_dice=0.90, test_dice=0.80),
        dict(job=0, overrides=[*common, "data.fold=1", resume], val_dice=0.1, test_dice=0.1),
        dict(job=1, overrides=["data.fold=1", resume, *common], val_dice=0.94, test_dice=0.84),
    ]
    table = fold_table(records).splitlines()
    assert table[2:] == ["| data.num_folds=3 | 2 | 0.9200 +- 0.0283 | 0.8200 +- 0.0283 |"]


@pytest.mark.slow
def test_backbone_multirun_and_report(cache_dir, tmp_path, capsys):
    from mlflow import MlflowClient

    sweep, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'mlruns.db'}"
    one_batch = [
        "stage.stages.0.epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "test=false",
    ]
    tracking = ["logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}"]
    run_train(
        ["-m", "backbone=mobilenetv3,resnet18", *one_batch, *tracking, *TINY, f"hydra.sweep.dir={sweep}"], cache_dir
    )
    records = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert sorted(r["backbone"] for r in records) == ["mobilenetv3", "resnet18"]
    assert len({r["run_dir"] for r in records}) == 2
    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name.startswith("sweep-")]
    assert experiment.name == f"sweep-{sweep.parent.name}_{sweep.name}"  # both jobs in the sweep's experiment
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["model/net/encoder_name"] for r in runs) == ["mobilenetv3", "resnet18"]
    report_main([str(sweep)])
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "backbone" not in line]
    assert len(rows) == 2 and "mobilenetv3" in table and "resnet18" in table
    for name in ("dice_vs_params.png", "val_dice_curves.png"):
        with Image.open(sweep / name) as image:
            image.verify()
            assert image.format == "PNG"
    page = (sweep / "report.html").read_text()
    assert page.count("<img") == 2 and "<td>resnet18</td>" in page and "<td>mobilenetv3</td>" in page


def test_model_table_counts_real_flops(capsys):
    report_main(["--models", "--size", "128"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")][1:]  # below the header
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines]
    gflops = {(name, "default" in encoder): float(cost) for name, encoder, _, cost, _ in rows}
    assert {name for name, _ in gflops} == {"mobilenetv3", "efficientnet_b0", "resnet18", "convnext_tiny"}
    for default in (True, False):
        assert gflops["convnext_tiny", default] > gflops["resnet18", default] > gflops["mobilenetv3", default] > 0
    assert all(gflops[name, True] < gflops[name, False] for name, _ in gflops)  # the default drops the last stages


@pytest.mark.slow
def test_ddp_sim_logs_the_global_metric(make_cfg, tmp_path):
    cfg = make_cfg(["trainer=ddp_sim", "stage.stages.0.epochs=1", "test=false", *TINY], tmp_path / "ddp")
    metric, _ = train(cfg)
    best = tmp_path / "ddp" / "checkpoints" / "best.ckpt"
    module = module_from_checkpoint(best)
    datamodule = instantiate(cfg.data, _convert_="all")
    single = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (result,) = single.validate(module, datamodule=datamodule)
    assert metric == pytest.approx(result["val/dice_mean"], abs=1e-6)


def test_slurm_launcher_config_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "hydra/launcher=slurm",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.gpus_per_node=4",
                "hydra.launcher.nodes=2",
            ],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.nodes, launcher.tasks_per_node) == ("gpu", 4, 2, 4)
    assert launcher.timeout_min > 0


@pytest.mark.slow
def test_optuna_search_runs_two_trials(cache_dir, tmp_path):
    sweep = tmp_path / "optuna"
    run_train(
        [
            "-m",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            "trainer.fast_dev_run=true",
            *TINY,
            f"hydra.sweep.dir={sweep}",
        ],
        cache_dir,
    )
    records = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in results and "best_value" in results


def _progress(checkpoint: Path) -> tuple[int, int] | None:
    """(global step, epochs processed) saved in a checkpoint."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception:  # absent or still being written
        return None
    return state["global_step"], state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]


@pytest.mark.slow
def test_killed_mid_epoch_resumes_and_finishes(cache_dir, make_cfg, tmp_path, caplog):
    run, resumed = tmp_path / "run", tmp_path / "resumed"
    # 64 training slices, batch 4 -> 16 steps per epoch; last.ckpt every 3 steps
    args = [
        "stage.stages.0.epochs=3",
        "callbacks.step_checkpoint.every_n_train_steps=3",
        "test=false",
        "trainer.limit_val_batches=1",
        *TINY,
    ]
    proc = start_train([*args, f"hydra.run.dir={run}"], cache_dir)
    last = run / "checkpoints" / "last.ckpt"
    assert kill_when(proc, lambda: (p := _progress(last)) is not None and p[0] > 16 and p[0] % 16 != 0, poll=0.2)
    step, processed = _progress(last)
    assert processed == 1 and 16 < step < 32, (step, processed)  # killed inside the second epoch
    with caplog.at_level(logging.INFO, logger="medseg.progress"):
        train(make_cfg([*args, f"ckpt_path={last}"], resumed))  # in-process: train.py resumes through train()
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    final = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == 48 and final["epoch"] == 2  # 3 full epochs of 16 steps: none lost
    lines = [r.getMessage() for r in caplog.records if r.name == "medseg.progress"]
    assert [line.split()[1] for line in lines] == ["2/3", "3/3"], lines
    elapsed, eta = re.search(r"elapsed ([\d:]+) eta ([\d:]+)", lines[0]).groups()
    assert eta == elapsed, lines[0]  # one epoch run since the resume, one to go


@pytest.mark.slow  # two identical training runs
def test_same_seed_same_dice(make_cfg, tmp_path):
    overrides = ["stage.stages.0.epochs=2", "trainer.limit_train_batches=4", "test=false", "seed=7", *TINY]
    first, _ = train(make_cfg(overrides, tmp_path / "a"))
    second, _ = train(make_cfg(overrides, tmp_path / "b"))
    assert first == second
