"""Exponential moving average of the weights with a decay warm-up, for Lightning's WeightAveraging callback."""

from __future__ import annotations

import torch


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
