"""The training pipeline behind train.py: instantiate from config, fit, test the best checkpoint."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from medseg.config import schedule_cut, validate_config  # also registers the resolvers
from medseg.models import PARTS
from medseg.training.callbacks.progressive import Stage
from medseg.training.sweep import record_sweep_result
from medseg.training.tracking import DatasetRecord, log_config, log_run_summary
from medseg.utils.checkpoint import SafeCheckpointIO, is_url, load_checkpoint, refuse_remote
from medseg.utils.cli import USER_ERRORS
from medseg.utils.io import atomic_path

log = logging.getLogger(__name__)


def instantiate_user(cfg: DictConfig, **kwargs):
    """Instantiate the user's own composed config; a user error raised inside comes out as itself (one line)."""
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, USER_ERRORS):
            raise exc.__cause__ from None
        raise


def instantiate_dict(cfg: DictConfig | None) -> list:
    """Instantiate every entry with a _target_ of a config mapping (callbacks, loggers)."""
    if not cfg:
        return []
    return [instantiate_user(c, _convert_="all") for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def load_weights(module: L.LightningModule, checkpoint: str | Path, allow_remote: bool = False) -> None:
    """Copy model weights (not optimizer state) from a validated, weights-only checkpoint into MODULE."""
    state = load_checkpoint(checkpoint, allow_remote)
    result = module.load_state_dict(state["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{checkpoint}: weights do not fit this model "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    module.on_load_checkpoint(state)
    log.info("initialised weights from %s", checkpoint)


def resume_path(ckpt_path: str | None, allow_remote: bool = False) -> str | None:
    """The checkpoint to resume from; a run killed before its first checkpoint starts again from the beginning."""
    if not ckpt_path:
        return None
    refuse_remote(ckpt_path, allow_remote)
    if is_url(ckpt_path):
        return str(ckpt_path)
    path = Path(ckpt_path).expanduser()
    if path.is_file():
        return str(path)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    present = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    if present:  # a typo, not a run killed before its first checkpoint
        raise FileNotFoundError(f"{path}: checkpoint not found; {run_dir / 'checkpoints'} holds {', '.join(present)}")
    if (run_dir / "config.yaml").is_file():
        log.warning("%s: the run stopped before its first checkpoint; starting it again from the beginning", path)
        return None
    raise FileNotFoundError(f"{path}: checkpoint not found (and {run_dir} is not a medseg run folder)")


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the fully resolved config as YAML, atomically."""
    with atomic_path(path) as tmp:
        OmegaConf.save(cfg, tmp, resolve=True)


def route_library_logs() -> None:
    """Send Lightning's console lines through the root logger (the run's train.log and stdout), not stderr."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def train(cfg: DictConfig) -> tuple[float | None, dict]:
    """Fit, optionally test the best checkpoint, and return the optimised metric and all metrics."""
    validate_config(cfg)
    route_library_logs()
    save_config(cfg, Path(cfg.paths.output_dir) / "config.yaml")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate_user(cfg.data, _convert_="all")
    model = instantiate_user(cfg.model, _recursive_=False)
    callbacks = [*instantiate_dict(cfg.get("callbacks")), DatasetRecord()]
    loggers = instantiate_dict(cfg.get("logger"))
    cut = schedule_cut(cfg)
    if cut:
        log.warning("%s", cut)
    remote = bool(cfg.get("allow_remote_checkpoints"))
    ckpt_path = resume_path(cfg.get("ckpt_path"), remote)
    plugins = [SafeCheckpointIO(allow_remote=remote)]
    trainer: L.Trainer = instantiate_user(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)
    first = Stage(**OmegaConf.to_container(cfg.stage.stages[0], resolve=True))  # type: ignore[arg-type]
    if cfg.get("init_from"):
        load_weights(model, cfg.init_from, remote)
    elif not ckpt_path and set(first.trainable) != set(PARTS):
        frozen = sorted(set(PARTS) - set(first.trainable))
        log.warning("stage %s freezes %s without init_from: those parts keep their initial weights", first.name, frozen)
    log_config(cfg, trainer.loggers)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics["train_time_s"] = time.perf_counter() - start
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[f"best/{checkpoint.monitor}"] = float(checkpoint.best_model_score)
    if cfg.get("test") and not cfg.trainer.get("fast_dev_run"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        test = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update({k: float(v) for k, v in (test[0] if test else {}).items()})
    if trainer.global_rank == 0:
        log_run_summary(cfg, trainer, model, metrics)
    record_sweep_result(cfg, model, trainer, metrics)
    name = cfg.get("optimized_metric", "")
    return metrics.get(f"best/{name}", metrics.get(name)), metrics
