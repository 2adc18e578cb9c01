"""Joint image+mask augmentation with albumentations at strengths none/low/mid/high."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2

STRENGTHS = ("none", "low", "mid", "high")

# strength -> (rotate deg, scale delta, translate fraction, elastic p, grid p, brightness/contrast limit, p)
_PARAMS = {
    "low": (10, 0.05, 0.03, 0.0, 0.0, 0.1, 0.5),
    "mid": (15, 0.10, 0.05, 0.2, 0.2, 0.2, 0.7),
    "high": (25, 0.15, 0.08, 0.4, 0.4, 0.3, 0.9),
}


def size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """An image size given as an int or [height, width], as (height, width)."""
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return int(height), int(width)


def build_augmentation(strength: str, seed: int | None = None, size: tuple[int, int] | None = None) -> A.Compose | None:
    """Geometric and intensity augmentation (masks nearest-neighbour, no colour jitter); SEED makes it repeatable.

    SIZE (height, width) resizes image and mask first (progressive resizing: augmenting fewer pixels costs less).
    """
    if strength not in STRENGTHS:
        raise ValueError(f"unknown augmentation strength {strength!r}; choose from {STRENGTHS}")
    nearest = cv2.INTER_NEAREST
    resize = [] if size is None else [A.Resize(*size, interpolation=cv2.INTER_AREA, mask_interpolation=nearest)]
    if strength == "none":
        return A.Compose(resize, seed=seed) if resize else None
    rot, scale, shift, p_elastic, p_grid, bc, p = _PARAMS[strength]
    border = dict(border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0)
    transforms: list = [
        A.Affine(
            rotate=(-rot, rot),
            scale=(1 - scale, 1 + scale),
            translate_percent=(-shift, shift),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            p=p,
            **border,
        ),
        A.RandomBrightnessContrast(brightness_limit=bc, contrast_limit=bc, p=p),
    ]
    if p_elastic:
        transforms.append(
            A.ElasticTransform(alpha=30, sigma=6, mask_interpolation=cv2.INTER_NEAREST, p=p_elastic, **border)
        )
    if p_grid:
        transforms.append(A.GridDistortion(distort_limit=0.2, mask_interpolation=cv2.INTER_NEAREST, p=p_grid, **border))
    return A.Compose(resize + transforms, seed=seed)
