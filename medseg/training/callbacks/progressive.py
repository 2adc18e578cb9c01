"""Staged training: per-stage learning rate, data fraction, augmentation strength and frozen parts."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import lightning as L
from lightning.pytorch.callbacks import Callback

from medseg.data.augment import STRENGTHS, size_pair
from medseg.models import PARTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One stage of the schedule.

    Args:
        name: shown in logs; a numeric name is logged as the stage number.
        epochs: epochs the stage runs.
        lr: learning rate of every parameter group at the stage start (schedulers restart from it).
        data_fraction: share of training patients (nested subsets).
        aug_strength: none, low, mid or high.
        image_size: training images resized to this size (an int or [height, width]) before augmentation,
            e.g. low-resolution epochs before full-resolution ones; None keeps `data.image_size`. Validation
            and test always run at `data.image_size`.
        train: network parts that train (`medseg.models.PARTS`), or ["all"]; the others are frozen.
    """

    name: str
    epochs: int
    lr: float
    data_fraction: float = 1.0
    aug_strength: str = "low"
    train: Sequence[str] = field(default_factory=lambda: ["all"])
    image_size: int | Sequence[int] | None = None

    @property
    def size(self) -> tuple[int, int] | None:
        """The stage's training size as (height, width), or None for the data's own size."""
        return None if self.image_size is None else size_pair(self.image_size)

    @property
    def trainable(self) -> tuple[str, ...]:
        """Network parts that train in this stage."""
        parts = tuple(self.train)
        if "all" in parts:
            return PARTS
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"stage {self.name}: unknown parts {sorted(unknown)}; choose from {PARTS} or 'all'")
        return parts


class ProgressiveSchedule(Callback):
    """Runs the stages in order within one fit, switching settings at stage boundaries."""

    def __init__(self, stages: Sequence[Mapping]) -> None:
        if not stages:
            raise ValueError("the schedule needs at least one stage")
        self.stages = [Stage(**{**s, "name": str(s["name"])}) for s in stages]
        self._start_epoch = 0
        self._current: int | None = None

    def stage_index(self, epoch: int) -> int:
        """Index of the stage that runs EPOCH (the last stage for epochs past the schedule)."""
        end = 0
        for i, stage in enumerate(self.stages):
            end += stage.epochs
            if epoch < end:
                return i
        return len(self.stages) - 1

    def _apply_data(self, trainer: L.Trainer, epoch: int) -> None:
        """Point the data module at the data fraction and augmentation of EPOCH's stage."""
        stage = self.stages[self.stage_index(epoch)]
        if trainer.datamodule is not None:
            trainer.datamodule.set_stage(stage.data_fraction, stage.aug_strength, stage.size)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply_data(trainer, self._start_epoch)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Also runs when a run resumes mid-epoch, where on_train_epoch_start is skipped.
        self._enter(trainer, pl_module, self.stage_index(trainer.current_epoch))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        index = self.stage_index(trainer.current_epoch)
        if index != self._current:
            self._enter(trainer, pl_module, index)

    def stage_start(self, index: int) -> int:
        """First epoch of stage INDEX."""
        return sum(stage.epochs for stage in self.stages[:index])

    @staticmethod
    def _reset_lr(trainer: L.Trainer, stage: Stage) -> None:
        """Start the stage's learning rate; schedulers restart (cosine annealing spans the stage)."""
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = stage.lr
                group["initial_lr"] = stage.lr
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [stage.lr] * len(scheduler.base_lrs)
            scheduler.last_epoch = 0
            if hasattr(scheduler, "T_max"):
                scheduler.T_max = stage.epochs
            if hasattr(scheduler, "lr_at"):  # schedules with a closed form start where they begin (a warm-up)
                for group, lr in zip(scheduler.optimizer.param_groups, scheduler.lr_at(0), strict=True):
                    group["lr"] = lr

    def _enter(self, trainer: L.Trainer, pl_module: L.LightningModule, index: int) -> None:
        """Set learning rate, reset schedulers and freeze parts for stage INDEX."""
        stage = self.stages[index]
        if trainer.current_epoch == self.stage_start(index):  # a resumed run keeps its restored LR state
            self._reset_lr(trainer, stage)
        pl_module.set_trainable(stage.trainable)
        log.info(
            "stage %s: lr %g, data %.0f%%, augmentation %s, training %s%s",
            stage.name,
            stage.lr,
            100 * stage.data_fraction,
            stage.aug_strength,
            ", ".join(stage.trainable),
            "" if stage.size is None else f", images {stage.size[0]}x{stage.size[1]}",
        )
        self._current = index

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        index = self.stage_index(trainer.current_epoch)
        stage = self.stages[index]
        size = stage.size or getattr(trainer.datamodule, "image_size", None)
        pl_module.log_dict(
            {  # the learning rate itself is LearningRateMonitor's curve
                "schedule/stage": float(stage.name) if stage.name.isdigit() else float(index + 1),
                "schedule/data_fraction": stage.data_fraction,
                "schedule/aug_strength": float(STRENGTHS.index(stage.aug_strength)),
                **({"schedule/image_height": float(size[0])} if size else {}),
            },
            on_step=False,
            on_epoch=True,
        )
        self._apply_data(trainer, trainer.current_epoch + 1)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Resume in the stage of the first epoch still to run."""
        try:
            self._start_epoch = int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
        except (KeyError, TypeError):
            self._start_epoch = int(checkpoint.get("epoch", -1)) + 1

    def state_dict(self) -> dict:
        """The current stage, saved into checkpoints."""
        index = self._current or 0
        return {"stage_index": index, "stage": asdict(self.stages[index])}

    def load_state_dict(self, state_dict: dict) -> None:
        """The stage is re-derived from the restored epoch (see on_load_checkpoint)."""
