"""Learning-rate schedules stepped per epoch that the staged schedule can restart at every stage."""

from __future__ import annotations

import math

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosineLR(LRScheduler):
    """Linear warm-up over `warmup_epochs`, then cosine decay to `eta_min` at epoch `T_max`.

    The learning rate of epoch e < w is base * (e + 1) / (w + 1); from w on it follows
    `CosineAnnealingLR` over the remaining T_max - w epochs. `ProgressiveSchedule` sets `T_max` to each
    stage's length and restarts it, as it does for `CosineAnnealingLR`.
    """

    def __init__(
        self, optimizer: Optimizer, T_max: int, warmup_epochs: int = 0, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        if warmup_epochs < 0 or T_max < 1:
            raise ValueError(f"need T_max >= 1 and warmup_epochs >= 0, got T_max={T_max}, warmup={warmup_epochs}")
        self.T_max, self.warmup_epochs, self.eta_min = T_max, warmup_epochs, eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch: int) -> list[float | Tensor]:
        """Learning rate of each parameter group at EPOCH (0-based, within the current cycle)."""
        warmup = min(self.warmup_epochs, self.T_max - 1)
        if epoch < warmup:
            return [base * (epoch + 1) / (warmup + 1) for base in self.base_lrs]
        t = min(epoch - warmup, self.T_max - warmup) / max(self.T_max - warmup, 1)
        return [self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * t)) / 2 for base in self.base_lrs]

    def get_lr(self) -> list[float | Tensor]:
        """Learning rates of the current epoch (closed form: restarts only need `last_epoch` reset)."""
        return self.lr_at(self.last_epoch)
