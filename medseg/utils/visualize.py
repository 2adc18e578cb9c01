"""Colour overlays of masks on images (numpy), for TensorBoard, evaluation and prediction outputs."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Class colours (RGB, 0..1): background unused, then red, green, blue, yellow, magenta, cyan.
PALETTE = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0.4, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], np.float32)


def _rgb(image: np.ndarray) -> np.ndarray:
    """[C, H, W] in [0, 1] as RGB [3, H, W] (grey repeated)."""
    return np.repeat(image[:1], 3, axis=0) if image.shape[0] == 1 else image[:3]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend class colours of MASK [H, W] over IMAGE [C, H, W] in [0, 1]; returns RGB [3, H, W]."""
    rgb = _rgb(image.astype(np.float32))
    index = np.minimum(mask.astype(np.int64), len(PALETTE) - 1) % len(PALETTE)
    colours = PALETTE[index].transpose(2, 0, 1)
    fg = (mask > 0)[None].astype(np.float32)
    return rgb * (1 - alpha * fg) + colours * alpha * fg


def overlay_grid(images: np.ndarray, masks: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Rows of (image, ground-truth overlay, prediction overlay) for [B, C, H, W] images: one [3, H', W'] grid."""
    rows = [
        np.concatenate([_rgb(image.astype(np.float32)), overlay(image, mask), overlay(image, pred)], axis=2)
        for image, mask, pred in zip(images, masks, preds, strict=True)
    ]
    return np.clip(np.concatenate(rows, axis=1), 0, 1)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """An RGB [3, H, W] array in [0, 1] as an [H, W, 3] uint8 picture."""
    return (rgb.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def palette_png(mask: np.ndarray) -> Image.Image:
    """A palette ('P') image of class indices, coloured with PALETTE (remaining entries grey)."""
    png = Image.fromarray(mask.astype(np.uint8), mode="P")
    palette = (PALETTE * 255).round().astype(np.uint8).flatten().tolist()
    png.putpalette(palette + [128] * (768 - len(palette)))
    return png
