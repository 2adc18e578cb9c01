"""Neighbouring-slice context (2.5-D): slice z is fed with slices z-k..z+k of its series as extra channels.

Edges are replicated (the first slice's lower neighbours are itself); a 2-D image is its own neighbours. Within a
series the neighbours are the nearest indexed slices at each offset, so one stack rule serves training,
validation, test, medseg-eval, medseg-predict and medseg-prepare.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from medseg.data.index import Sample


def stack_indices(count: int, k: int) -> list[list[int]]:
    """For each of COUNT slices in order, the indices of slices z-K..z+K, clamped at the edges."""
    return [[min(max(z + d, 0), count - 1) for d in range(-k, k + 1)] for z in range(count)]


def series_neighbours(samples: Sequence[Sample], k: int) -> list[list[int]]:
    """For each sample, the indices into SAMPLES of its 2K+1 stack (itself in the middle), by series order."""
    if k == 0:
        return [[i] for i in range(len(samples))]
    by_series: dict[str, list[int]] = defaultdict(list)
    stacks: list[list[int]] = [[i] * (2 * k + 1) for i in range(len(samples))]
    for i, sample in enumerate(samples):
        if sample.series:
            by_series[sample.series].append(i)
    for members in by_series.values():
        members.sort(key=lambda i: samples[i].slice_index)
        for z, stack in enumerate(stack_indices(len(members), k)):
            stacks[members[z]] = [members[j] for j in stack]
    return stacks


def stack_images(images: Sequence[np.ndarray], stack: Sequence[int]) -> np.ndarray:
    """Images [H, W, C] at the indices STACK concatenated along the channels: [H, W, C * len(STACK)]."""
    return np.concatenate([images[i] for i in stack], axis=-1)


def context_channels(in_channels: int, context_slices: int) -> int:
    """The network's input channels: each slice's channels times the 2K+1 slices of a stack."""
    return int(in_channels) * (2 * int(context_slices) + 1)
