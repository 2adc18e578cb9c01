"""Model sizes: parameters and forward FLOPs, counted by torch's FlopCounterMode."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params_flops(net: torch.nn.Module, in_channels: int, size: Sequence[int]) -> tuple[int, float]:
    """(parameters, forward GFLOPs) of NET for one image of SIZE; a multiply-add counts as 2 FLOPs."""
    params = sum(p.numel() for p in net.parameters())
    was_training = net.training
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, in_channels, *size))
    net.train(was_training)
    return params, counter.get_total_flops() / 1e9
