"""Neighbouring-slice context (2.5-D): slice z is fed with slices z-k..z+k of its series as extra channels.

Edges are replicated (the first slice's lower neighbours are itself); a 2-D image is its own neighbours. Within a
series the neighbours are the nearest indexed slices at each offset, so one stack rule serves training,
validation, test, medseg-eval, medseg-predict and medseg-prepare.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from medseg.data.index import Sample


def stack_indices(count: int, k: int) -> list[list[int]]:
    """For each of COUNT slices in order, the indices of slices z-K..z+K, clamped at the edges."""
    return [[min(max(z + d, 0), count - 1) for d in range(-k, k + 1)] for z in range(count)]


def series_stacks(samples: Sequence[Sample], k: int) -> list[tuple[Sample, ...]]:
    """For each sample, the 2K+1 samples of its stack (itself in the middle): slices z-K..z+K of its series, labelled
    or not (a frame without a label comes as a label-free sample), as inference stacks a whole series."""
    if k == 0:
        return [(s,) for s in samples]
    by_series: dict[str, list[int]] = defaultdict(list)
    for i, sample in enumerate(samples):
        if sample.series:
            by_series[sample.series].append(i)
    stacks: list[tuple[Sample, ...]] = [(s,) * (2 * k + 1) for s in samples]  # a 2-D image is its own neighbours
    for members in by_series.values():
        members.sort(key=lambda i: samples[i].slice_index)
        at = {samples[i].slice_index: samples[i] for i in members}
        for i, places in zip(members, stack_indices(len(members), k), strict=True):
            sample = samples[i]
            if sample.frames:  # the whole series is known: neighbours by place, labelled or not
                indices = stack_indices(len(sample.frames), k)[sample.slice_index]
                stacks[i] = tuple(at.get(j) or _label_free(sample, j) for j in indices)
            else:  # every frame labelled: neighbours among the members present
                stacks[i] = tuple(samples[members[j]] for j in places)
    return stacks


def _label_free(sample: Sample, index: int) -> Sample:
    """The frame at INDEX of SAMPLE's series as a context-only sample (no labels)."""
    path, frame = sample.frames[index]
    return replace(sample, image=path, mask=path, frame=frame, slice_index=index, label_free=True, unlabelled=())


def stack_images(images: Sequence[np.ndarray], stack: Sequence[int]) -> np.ndarray:
    """Images [H, W, C] at the indices STACK concatenated along the channels: [H, W, C * len(STACK)]."""
    return np.concatenate([images[i] for i in stack], axis=-1)


def context_channels(in_channels: int, context_slices: int) -> int:
    """The network's input channels: each slice's channels times the 2K+1 slices of a stack."""
    return int(in_channels) * (2 * int(context_slices) + 1)
