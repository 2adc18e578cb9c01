"""In-plane resampling to a target pixel spacing (images linear, labels nearest) and back to the source grid."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, int]:
    """(rows, columns) of a SHAPE image at SPACING (mm) resampled to TARGET spacing (mm)."""
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape[:2], spacing, target, strict=True))  # type: ignore[return-value]


def nearest_indices(source: int, target: int) -> np.ndarray:
    """For each of TARGET pixels along an axis, the SOURCE pixel whose extent holds its centre."""
    return np.minimum(((np.arange(target) + 0.5) * source / target).astype(np.int64), source - 1)


def resample_labels(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Labels [H, W] on a grid of SHAPE covering the same extent (nearest pixel centre); exact both ways when
    one grid is a refinement of the other."""
    rows, cols = nearest_indices(mask.shape[0], shape[0]), nearest_indices(mask.shape[1], shape[1])
    return mask[np.ix_(rows, cols)]


def resample_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """An image [H, W, C] on a grid of SHAPE covering the same extent (linear; area-averaged when shrinking)."""
    shrink = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    out = cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out.reshape(shape[0], shape[1], -1)


def to_spacing(image: np.ndarray, mask: np.ndarray | None, spacing, target, where: object):
    """IMAGE (and MASK) resampled from SPACING to TARGET (row, column mm); unchanged without TARGET. A
    missing SPACING with a TARGET is refused, naming WHERE."""
    if target is None:
        return image, mask
    if not spacing:
        raise ValueError(f"{where}: no pixel spacing in the file, but data.spacing={list(target)} asks to resample")
    shape = resampled_shape(image.shape, spacing, target)
    return resample_image(image, shape), None if mask is None else resample_labels(mask, shape)
