"""One log line per epoch for runs without a terminal (nohup, SLURM, CI): the rich bar only draws in a terminal."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import defaultdict
from collections.abc import Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger("medseg.progress")


def _value(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def remaining_seconds(
    seconds: dict[int, float], epochs: dict[int, int], val_per_epoch: float, left: Sequence[int], cost: Sequence[float]
) -> float:
    """Seconds the epochs LEFT (their stage indices) will take: a stage's own mean epoch time where it has run,
    else the latest stage's training time scaled by training cost (pixels x data fraction), plus validation."""
    latest = max(s for s in epochs if epochs[s])
    train = max(seconds[latest] / epochs[latest] - val_per_epoch, 0.0)

    def per_epoch(stage: int) -> float:
        if epochs.get(stage):
            return seconds[stage] / epochs[stage]
        return train * cost[stage] / cost[latest] + val_per_epoch

    return sum(per_epoch(stage) for stage in left)


class EpochLog(Callback):
    """Logs epoch/max, stage, train loss, val Dice, lr, epoch seconds, elapsed and ETA after each epoch; charts
    `time/epoch_s` (training and validation) and `time/img_per_s` (training images per second of training)."""

    def __init__(self, only_without_terminal: bool = True) -> None:
        self.only_without_terminal = only_without_terminal
        self._fit_start = self._epoch_start = self._val_start = self._val_seconds = 0.0
        self._stage_seconds: dict[int, float] = defaultdict(float)  # of the epochs this process ran, per stage
        self._stage_epochs: dict[int, int] = defaultdict(int)
        self._loss_sum, self._batches, self._lr = 0.0, 0, float("nan")
        self._images, self._epoch_val_start = 0, 0.0

    @property
    def active(self) -> bool:
        """Whether lines are written (always, or only when stdout is not a terminal)."""
        return not (self.only_without_terminal and sys.stdout.isatty())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = self._epoch_start = time.perf_counter()  # a resumed run may start mid-epoch
        self._val_seconds = 0.0
        self._stage_seconds.clear()
        self._stage_epochs.clear()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._loss_sum, self._batches, self._images, self._epoch_val_start = 0.0, 0, 0, self._val_seconds
        self._lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_seconds += time.perf_counter() - self._val_start

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._images += len(batch["image"]) if isinstance(batch, dict) and "image" in batch else 0
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss_sum += float(loss)
            self._batches += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        schedule = next((c for c in trainer.callbacks if hasattr(c, "stage_index")), None)
        index = schedule.stage_index(trainer.current_epoch) if schedule else 0
        self._stage_seconds[index] += now - self._fit_start - sum(self._stage_seconds.values())  # this epoch's
        self._stage_epochs[index] += 1
        seconds = now - self._epoch_start
        training = seconds - (self._val_seconds - self._epoch_val_start)
        pl_module.log("time/epoch_s", seconds)
        if self._images and training > 0:
            pl_module.log("time/img_per_s", self._images / training)
        if not self.active or trainer.global_rank != 0:
            return
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs or 0
        elapsed = now - self._fit_start
        left = [schedule.stage_index(e) if schedule else 0 for e in range(epoch, total)]
        val_per_epoch = self._val_seconds / sum(self._stage_epochs.values())
        eta = remaining_seconds(self._stage_seconds, self._stage_epochs, val_per_epoch, left, _costs(trainer, schedule))
        metrics = trainer.callback_metrics
        stage = schedule.stages[index].name if schedule else "-"
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
            seconds,
            _duration(elapsed),
            _duration(eta),
        )


def _costs(trainer: L.Trainer, schedule) -> list[float]:
    """Relative training cost of an epoch of each stage: pixels per image x share of the training data."""
    default = getattr(trainer.datamodule, "image_size", None) or (1, 1)
    if schedule is None:
        return [1.0]
    return [float(math.prod(s.size or default)) * s.data_fraction for s in schedule.stages]
