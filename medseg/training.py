"""The training pipeline behind train.py: instantiate from config, fit, test the best checkpoint."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import medseg.config  # noqa: F401  (registers resolvers)
from medseg.io import atomic_path
from medseg.report import RESULTS_FILE, append_result, count_params_flops

log = logging.getLogger(__name__)


def instantiate_dict(cfg: DictConfig | None) -> list:
    """Instantiate every entry with a _target_ of a config mapping (callbacks, loggers)."""
    if not cfg:
        return []
    return [instantiate(c, _convert_="all") for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def load_weights(module: L.LightningModule, checkpoint: str | Path) -> None:
    """Copy model weights (not optimizer state) from a checkpoint into MODULE."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"init_from checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    result = module.load_state_dict(state["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: weights do not fit this model "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    module.on_load_checkpoint(state)
    log.info("initialised weights from %s", path)


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the fully resolved config as YAML, atomically."""
    with atomic_path(path) as tmp:
        OmegaConf.save(cfg, tmp, resolve=True)


def record_sweep_result(cfg: DictConfig, model: L.LightningModule, trainer: L.Trainer, metrics: dict) -> None:
    """In a Hydra multirun, append this job's summary to the sweep folder's results file (rank 0 only)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN or trainer.global_rank != 0:
        return
    size = cfg.data.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    params, gflops = count_params_flops(model.net, cfg.data.in_channels, size)
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


def train(cfg: DictConfig) -> tuple[float | None, dict]:
    """Fit, optionally test the best checkpoint, and return the optimised metric and all metrics."""
    save_config(cfg, Path(cfg.paths.output_dir) / "config.yaml")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _recursive_=False)
    callbacks = instantiate_dict(cfg.get("callbacks"))
    loggers = instantiate_dict(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    first = cfg.stage.stages[0]
    if cfg.get("init_from"):
        load_weights(model, cfg.init_from)
    elif str(first.name) in ("2", "3") and not cfg.get("ckpt_path"):
        log.warning("stage %s starts without init_from: training from the encoder's initial weights", first.name)
    if loggers:
        trainer.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics["train_time_s"] = time.perf_counter() - start
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[f"best/{checkpoint.monitor}"] = float(checkpoint.best_model_score)
    if cfg.get("test") and not cfg.trainer.get("fast_dev_run"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        test = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update({k: float(v) for k, v in (test[0] if test else {}).items()})
    record_sweep_result(cfg, model, trainer, metrics)
    name = cfg.get("optimized_metric", "")
    return metrics.get(f"best/{name}", metrics.get(name)), metrics
