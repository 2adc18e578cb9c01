"""Exponential moving average of the weights with a decay warm-up, on Lightning's WeightAveraging callback."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


def ema_decay(step: int, decay: float, warmup: float) -> float:
    """The EMA decay after STEP updates: (1 + step) / (warmup + step), capped at DECAY."""
    return min(decay, (1 + step) / (warmup + step))


class WarmupEMA:
    """A `multi_avg_fn` for `torch.optim.swa_utils.AveragedModel`: EMA whose decay grows from ~0.2 to DECAY.

    A fixed decay of 0.99 keeps the random initial weights in the average for hundreds of steps, so the
    averaged model predicts nothing in the first epochs; growing the decay with the step count (as
    TensorFlow's ExponentialMovingAverage with num_updates) lets the average follow the early weights.
    Integer buffers (BatchNorm's batch counters) are copied, not averaged. A plain object, so it pickles
    (spawned DDP processes)."""

    def __init__(self, decay: float = 0.99, warmup: float = 10.0) -> None:
        if not 0.0 <= decay <= 1.0 or warmup < 1:
            raise ValueError(f"EMA decay must lie in [0, 1] and warmup be >= 1, got decay={decay}, warmup={warmup}")
        self.decay, self.warmup = decay, warmup

    def __call__(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        """Move the AVERAGED tensors towards CURRENT in place after NUM_AVERAGED earlier updates."""
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        torch._foreach_lerp_(averaged, current, 1.0 - ema_decay(int(num_averaged), self.decay, self.warmup))


class EMAWeightAveraging(WeightAveraging):
    """Lightning's WeightAveraging whose runs after fitting (test, validate, predict) keep the averaged weights.

    A checkpoint written during fitting holds the averaged weights in `state_dict` and the raw ones in
    `current_model_state`. Lightning's callback, which keeps its average after `fit`, loads the raw weights back
    into the model whenever a checkpoint is loaded, so `trainer.test(ckpt_path="best")` would score weights that
    were never validated, and swaps its final average in at each validation. Outside fitting this callback
    leaves the model with what the checkpoint's `state_dict` holds: the averaged weights that earned "best"."""

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        """Restore the average and the raw weights when resuming a fit; keep the averaged weights otherwise."""
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        """Swap the averaged weights in for validation during fitting only."""
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        """Swap the raw weights back after a validation during fitting."""
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_end(trainer, pl_module)
