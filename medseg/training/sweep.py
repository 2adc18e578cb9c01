"""Hydra multirun: each job appends its summary to the sweep folder's results file."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from medseg.config import is_multirun
from medseg.data.augment import size_pair
from medseg.evaluation.results import RESULTS_FILE, append_result
from medseg.utils.sizes import count_params_flops


def record_sweep_result(cfg: DictConfig, model: L.LightningModule, trainer: L.Trainer, metrics: dict) -> None:
    """In a Hydra multirun, append this job's summary to the sweep folder's results file (rank 0 only)."""
    from hydra.core.hydra_config import HydraConfig

    if not is_multirun() or trainer.global_rank != 0:
        return
    size = size_pair(cfg.data.image_size)
    params, gflops = count_params_flops(model.net, cfg.data.in_channels, size)  # type: ignore[arg-type]
    images = trainer.global_step * cfg.data.batch_size
    append_result(
        Path(HydraConfig.get().sweep.dir) / RESULTS_FILE,
        dict(
            job=HydraConfig.get().job.num,
            overrides=list(HydraConfig.get().overrides.task),
            backbone=cfg.model.net.encoder_name,
            params=params,
            gflops=gflops,
            val_dice=metrics.get("best/val/dice_mean", metrics.get("val/dice_mean")),
            test_dice=metrics.get("test/dice_mean"),
            train_time_s=metrics["train_time_s"],
            images_per_s=images / max(metrics["train_time_s"], 1e-9),
            run_dir=str(cfg.paths.output_dir),
        ),
    )
