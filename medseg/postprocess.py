"""Mask clean-up: keep the largest connected components of a class and fill the holes they enclose."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage


def keep_largest(mask: np.ndarray, keep: Mapping[int, int], fill_holes: bool = True) -> np.ndarray:
    """MASK [H, W] with, per class index in KEEP, only its k largest 8-connected components (others become
    background) and background holes inside them filled; other classes unchanged."""
    out = mask.copy()
    for cls, k in keep.items():
        region = out == cls
        labels, count = ndimage.label(region, structure=np.ones((3, 3), bool))
        if count > k:
            sizes = np.bincount(labels.ravel())[1:]
            kept = np.argsort(sizes)[::-1][:k] + 1
            out[region & ~np.isin(labels, kept)] = 0
        if fill_holes:
            filled = ndimage.binary_fill_holes(out == cls)
            out[filled & (out == 0)] = cls
    return out


def class_indices(keep: Mapping[str, int] | None, class_names: Sequence[str]) -> dict[int, int]:
    """{class name: k} -> {class index: k}; raise on a name the model does not have."""
    if not keep:
        return {}
    unknown = [name for name in keep if name not in class_names]
    if unknown:
        raise ValueError(f"keep_largest names {unknown}, not classes of this model {list(class_names)}")
    return {list(class_names).index(name): int(k) for name, k in keep.items()}
