"""Run summaries for experiment trackers: TensorBoard's HPARAMS view and MLflow metrics and artifacts."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

FINAL_METRICS = {"hparams/best_val_dice": "best/val/dice_mean", "hparams/test_dice": "test/dice_mean"}


def key_hyperparameters(cfg: DictConfig) -> dict:
    """The settings a sweep is compared by: backbone, loss, stages, lr, image size, bins, output stride."""
    net = cfg.model.net
    size = cfg.data.image_size
    return {
        "backbone": str(net.encoder_name),
        "loss": str(cfg.model.loss._target_).rsplit(".", 1)[-1],
        "stage": "+".join(str(s.name) for s in cfg.stage.stages),
        "lr": float(cfg.stage.stages[0].lr),
        "image_size": "x".join(str(s) for s in (size if OmegaConf.is_list(size) else [size, size])),
        "bins": ",".join(str(b) for b in net.bins),
        "output_stride": int(net.get("output_stride", 8)),
    }


def log_run_summary(cfg: DictConfig, loggers: list[Logger], metrics: dict, config_file: Path) -> None:
    """Final metrics with the key hyper-parameters (TensorBoard HPARAMS), and MLflow artifacts when asked for."""
    final = {name: float(metrics[key]) for name, key in FINAL_METRICS.items() if metrics.get(key) is not None}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) and final:
            logger.log_hyperparams(key_hyperparameters(cfg), final)
        elif isinstance(logger, MLFlowLogger):
            if final:
                logger.log_metrics(final)
            if cfg.logger.mlflow.get("log_model") and config_file.is_file():
                logger.experiment.log_artifact(logger.run_id, str(config_file))
        logger.save()
