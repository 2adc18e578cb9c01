"""last.ckpt at every epoch end and every N training steps, whether or not another checkpoint was saved."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that owns last.ckpt: refreshed at every epoch end (Lightning's own refreshes it there
    only when it saved another checkpoint at that step) and every `every_n_train_steps`.

    The epoch end is where Lightning saves: the train epoch end, or the validation end when validation runs
    more or less often than once per epoch.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save last.ckpt unless this step saved it already."""
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save last.ckpt here when this is where the epoch's checkpoints are saved."""
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = trainer.global_step
