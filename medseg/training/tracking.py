"""Run summaries for experiment trackers: TensorBoard's HPARAMS view and MLflow metrics and artifacts."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from omegaconf import DictConfig

from medseg.data.augment import size_pair

FINAL_METRICS = {"hparams/best_val_dice": "best/val/dice_mean", "hparams/test_dice": "test/dice_mean"}


def key_hyperparameters(cfg: DictConfig) -> dict:
    """The settings a sweep is compared by: backbone, loss, stages, lr, image size, bins, output stride, encoder
    depth (those a network of another `_target_` does not have are left empty)."""
    net = cfg.model.net
    bins, stride = net.get("bins"), net.get("output_stride")
    depth = "" if "encoder_depth" not in net else str(net.encoder_depth or "all")
    return {
        "backbone": str(net.get("encoder_name") or net.get("_target_")),
        "loss": str(cfg.model.loss._target_).rsplit(".", 1)[-1],
        "stage": "+".join(str(s.name) for s in cfg.stage.stages),
        "lr": float(cfg.stage.stages[0].lr),
        "image_size": "x".join(str(s) for s in size_pair(cfg.data.image_size)),
        "bins": "" if bins is None else ",".join(str(b) for b in bins),
        "output_stride": "" if stride is None else int(stride),
        "encoder_depth": depth,
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
                log_checkpoints(logger, config_file.parent / "checkpoints")
        logger.save()


def log_checkpoints(logger: MLFlowLogger, folder: Path) -> None:
    """Every checkpoint of the run (best.ckpt, last.ckpt) as an artifact `<stem>/<file>`, unless already logged."""
    for path in sorted(folder.glob("*.ckpt")):
        logged = {a.path for a in logger.experiment.list_artifacts(logger.run_id, path.stem)}
        if f"{path.stem}/{path.name}" not in logged:
            logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=path.stem)
