"""One log line per epoch for runs without a terminal (nohup, SLURM, CI): the rich bar only draws in a terminal."""

from __future__ import annotations

import logging
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger("medseg.progress")


def _value(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class EpochLog(Callback):
    """Logs epoch/max, stage, train loss, val Dice, lr, epoch seconds, elapsed and ETA after each epoch."""

    def __init__(self, only_without_terminal: bool = True) -> None:
        self.only_without_terminal = only_without_terminal
        self._fit_start = self._epoch_start = 0.0
        self._first_epoch = 0
        self._loss_sum, self._batches, self._lr = 0.0, 0, float("nan")

    @property
    def active(self) -> bool:
        """Whether lines are written (always, or only when stdout is not a terminal)."""
        return not (self.only_without_terminal and sys.stdout.isatty())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = self._epoch_start = time.perf_counter()  # a resumed run may start mid-epoch
        self._first_epoch = trainer.current_epoch  # the ETA's rate counts only the epochs this process ran

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._loss_sum, self._batches = 0.0, 0
        self._lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss_sum += float(loss)
            self._batches += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active or trainer.global_rank != 0:
            return
        now = time.perf_counter()
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs or 0
        elapsed = now - self._fit_start
        eta = elapsed / max(epoch - self._first_epoch, 1) * max(total - epoch, 0)
        metrics = trainer.callback_metrics
        schedule = next((c for c in trainer.callbacks if hasattr(c, "stage_index")), None)
        stage = schedule.stages[schedule.stage_index(trainer.current_epoch)].name if schedule else "-"
        loss = self._loss_sum / self._batches if self._batches else None  # this rank's mean over the epoch
        dice = _value(metrics, "val/dice_mean")
        log.info(
            "epoch %d/%d stage %s train_loss %s val_dice %s lr %.3g epoch %.0fs elapsed %s eta %s",
            epoch,
            total,
            stage,
            "-" if loss is None else f"{loss:.4f}",
            "-" if dice is None else f"{dice:.4f}",
            self._lr,
            now - self._epoch_start,
            _duration(elapsed),
            _duration(eta),
        )
