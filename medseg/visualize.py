"""Colour overlays of masks on images, for TensorBoard and prediction outputs."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# Class colours (RGB, 0..1): background unused, then red, green, blue, yellow, magenta, cyan.
PALETTE = torch.tensor(
    [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0.4, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.float32
)


def overlay(image: torch.Tensor, mask: torch.Tensor, alpha: float = 0.45) -> torch.Tensor:
    """Blend class colours of MASK [H, W] over IMAGE [C, H, W] in [0, 1]; returns RGB [3, H, W]."""
    rgb = image[:1].expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    colours = PALETTE.to(image.device)[mask.clamp(max=len(PALETTE) - 1) % len(PALETTE)].permute(2, 0, 1)
    fg = (mask > 0).unsqueeze(0).to(image.dtype)
    return rgb * (1 - alpha * fg) + colours * alpha * fg


def overlay_grid(images: torch.Tensor, masks: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows of (image, ground-truth overlay, prediction overlay) stacked into one [3, H', W'] grid."""
    rows = []
    for image, mask, pred in zip(images.float().cpu(), masks.cpu(), preds.cpu(), strict=True):
        gray = image[:1].expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
        rows.append(torch.cat([gray, overlay(image, mask), overlay(image, pred)], dim=2))
    return torch.cat(rows, dim=1).clamp(0, 1)


def palette_png(mask: np.ndarray) -> Image.Image:
    """A palette ('P') image of class indices, coloured with PALETTE (remaining entries grey)."""
    png = Image.fromarray(mask.astype(np.uint8), mode="P")
    palette = (PALETTE.numpy() * 255).round().astype(np.uint8).flatten().tolist()
    png.putpalette(palette + [128] * (768 - len(palette)))
    return png
