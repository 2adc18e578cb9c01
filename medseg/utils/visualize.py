"""Colour overlays of masks on images (numpy), for TensorBoard, evaluation and prediction outputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


COLUMNS = ("input", "truth", "prediction")


def overlay_grid(
    images: np.ndarray, masks: np.ndarray, preds: np.ndarray, class_names: Sequence[str] | None = None
) -> np.ndarray:
    """Rows of (image, ground-truth overlay, prediction overlay) for [B, C, H, W] images: one [3, H', W'] grid;
    with CLASS_NAMES (background first), column titles above and a class colour legend below."""
    rows = [
        np.concatenate([_rgb(image.astype(np.float32)), overlay(image, mask), overlay(image, pred)], axis=2)
        for image, mask, pred in zip(images, masks, preds, strict=True)
    ]
    grid = np.clip(np.concatenate(rows, axis=1), 0, 1)
    if class_names is None:
        return grid
    width = grid.shape[2]
    header = _text_strip(width, [(i * width // 3 + 3, title) for i, title in enumerate(COLUMNS)])
    return np.concatenate([header, grid, _legend(width, class_names[1:])], axis=1)


STRIP = 14  # height of a text strip in pixels


def _text_strip(width: int, labels: Sequence[tuple[int, str]], swatches: Sequence[int | None] = ()) -> np.ndarray:
    """A dark strip WIDTH wide with LABELS (x, text) in white; a class colour square before each text of SWATCHES."""
    strip = Image.new("RGB", (width, STRIP), (24, 24, 24))
    draw, font = ImageDraw.Draw(strip), ImageFont.load_default()
    for (x, text), k in zip(labels, swatches or [None] * len(labels), strict=True):
        if k is not None:
            colour = tuple(int(c * 255) for c in PALETTE[min(k, len(PALETTE) - 1)])
            draw.rectangle((x - 12, 3, x - 4, 11), fill=colour)
        draw.text((x, 1), text, fill=(255, 255, 255), font=font)
    return np.asarray(strip, np.float32).transpose(2, 0, 1) / 255


def _legend(width: int, names: Sequence[str]) -> np.ndarray:
    """Strips of class colour squares and names (foreground classes 1..K), wrapped to WIDTH."""
    font, x = ImageFont.load_default(), 15
    strips: list[list[tuple[int, str, int]]] = []
    line: list[tuple[int, str, int]] = []
    for k, name in enumerate(names, start=1):
        size = int(font.getlength(name)) + 22
        if line and x + size > width:
            strips.append(line)
            line, x = [], 15
        line.append((x, name, k))
        x += size
    strips.append(line)
    return np.concatenate([_text_strip(width, [(x, n) for x, n, _ in s], [k for *_, k in s]) for s in strips], axis=1)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """An RGB [3, H, W] array in [0, 1] as an [H, W, 3] uint8 picture."""
    return (rgb.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def palette_png(mask: np.ndarray) -> Image.Image:
    """A palette ('P') image of class indices, coloured with PALETTE (remaining entries grey)."""
    png = Image.fromarray(mask.astype(np.uint8), mode="P")
    palette = (PALETTE * 255).round().astype(np.uint8).flatten().tolist()
    png.putpalette(palette + [128] * (768 - len(palette)))
    return png
