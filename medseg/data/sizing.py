"""Slices fitted to the network's size by a size policy (stretch, letterbox, crop), and network outputs mapped back
exactly: the one sizing rule of training, the test step, medseg-eval, medseg-predict and the node."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

POLICIES = ("stretch", "letterbox", "crop")


@dataclass(frozen=True)
class Placement:
    """Where a source slice of SOURCE (rows, columns) sits in the network input: the box (top, left, rows,
    columns) its resized content fills (crop: the window of the source it shows)."""

    source: tuple[int, int]
    box: tuple[int, int, int, int]


def placement(shape: Sequence[int], size: Sequence[int], policy: str) -> Placement:
    """The placement of a slice of SHAPE (rows, columns) in an input of SIZE under POLICY."""
    (h, w), (th, tw) = (int(v) for v in shape[:2]), (int(v) for v in size)
    if policy == "stretch":
        return Placement((h, w), (0, 0, th, tw))
    if policy == "letterbox":
        scale = min(th / h, tw / w)
        nh, nw = round(h * scale), round(w * scale)
        return Placement((h, w), ((th - nh) // 2, (tw - nw) // 2, nh, nw))
    if policy == "crop":  # centred; a negative offset is where the input's window starts in the source
        top = (th - h) // 2 if th >= h else -((h - th) // 2)
        left = (tw - w) // 2 if tw >= w else -((w - tw) // 2)
        return Placement((h, w), (top, left, h, w))
    raise ValueError(f"unknown size_policy {policy!r}; choose one of {', '.join(POLICIES)}")


def fit_image(image: np.ndarray, size: Sequence[int], policy: str, nearest: bool = False) -> np.ndarray:
    """IMAGE ([H, W] or [H, W, C]) fitted to SIZE by POLICY (area interpolation, or NEAREST for labels)."""
    where = placement(image.shape, size, policy)
    if policy == "crop":
        return centre_fit(image, size)
    top, left, nh, nw = where.box
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    resized = cv2.resize(image, (nw, nh), interpolation=interpolation).reshape(nh, nw, *image.shape[2:])
    if (nh, nw) == tuple(size):
        return resized
    out = np.zeros((*size, *image.shape[2:]), image.dtype)
    out[top : top + nh, left : left + nw] = resized
    return out


def restore(outputs: np.ndarray, where: Placement) -> np.ndarray:
    """Network OUTPUTS [K, h, w] for a slice placed by WHERE, back on the slice's own grid [K, H, W] (linear)."""
    top, left, nh, nw = where.box
    h, w = where.source
    if (nh, nw) == (h, w):  # crop: the pixel scale is kept; a window of the source or the source padded
        out = np.zeros((outputs.shape[0], h, w), outputs.dtype)
        sy, sx, dy, dx = max(0, -top), max(0, -left), max(0, top), max(0, left)
        ch, cw = min(h, outputs.shape[1]), min(w, outputs.shape[2])
        out[:, sy : sy + ch, sx : sx + cw] = outputs[:, dy : dy + ch, dx : dx + cw]
        return out
    inside = outputs[:, top : top + nh, left : left + nw]
    return np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in inside])


def fit_to_size(image: np.ndarray, mask: np.ndarray, size: Sequence[int], policy: str = "stretch"):
    """An image [H, W, C] and its mask [H, W] fitted to SIZE (H, W) by POLICY: resized (stretch), resized with
    the aspect ratio kept and zero-padded (letterbox), or centre padded or cropped at the pixel scale (crop)."""
    image = fit_image(image, size, policy)
    mask = fit_image(mask, size, policy, nearest=True)
    return (image[..., None] if image.ndim == 2 else image), mask


def centre_fit(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """ARRAY ([H, W] or [H, W, C]) centre-cropped or zero-padded to SIZE (H, W)."""
    out = np.zeros((*size, *array.shape[2:]), array.dtype)
    (h, w), (th, tw) = array.shape[:2], size
    sy, sx, dy, dx = max(0, (h - th) // 2), max(0, (w - tw) // 2), max(0, (th - h) // 2), max(0, (tw - w) // 2)
    ch, cw = min(h, th), min(w, tw)
    out[dy : dy + ch, dx : dx + cw] = array[sy : sy + ch, sx : sx + cw]
    return out
