"""What the in-memory and streamed data modules share: loader settings and the stage-driven split loaders."""

from __future__ import annotations

import os
from collections.abc import Iterable

import lightning as L
import numpy as np

from medseg.data.augment import STRENGTHS, build_augmentation


def loader_workers(setting: int | str | None, trainer: L.Trainer | None) -> int:
    """DataLoader worker count: an int as given; "auto" is 0 on CPU and up to 8 per GPU process otherwise."""
    if setting not in (None, "auto"):
        return int(setting)
    accelerator = type(getattr(trainer, "accelerator", None)).__name__.lower()
    if "cpu" in accelerator or trainer is None:
        return 0
    per_node = max(1, int(getattr(trainer, "num_devices", 1) or 1))
    return max(1, min(8, (os.cpu_count() or 1) // per_node))


def count_pixels(masks: Iterable[np.ndarray], num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Pixels per class over MASKS (class-index arrays), ignoring IGNORE_INDEX."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for mask in masks:
        counts += np.bincount(mask[mask != ignore_index].ravel(), minlength=num_classes)[:num_classes]
    return counts


def pin_memory(trainer: L.Trainer | None) -> bool:
    """Page-locked host batches when training on CUDA."""
    return trainer is not None and "cuda" in type(trainer.accelerator).__name__.lower()


class SplitLoaders:
    """train/val/test dataloaders from a data module's `dataset(split, augment)` and `_loader(dataset, train)`.

    The training stage owns the data fraction, augmentation strength and training size: `set_stage` takes them.
    """

    image_size: tuple[int, int]
    data_fraction: float = 1.0
    aug_strength: str = "low"
    train_size: tuple[int, int] | None = None  # a stage's training size (progressive resizing); None: image_size

    def set_stage(
        self, data_fraction: float = 1.0, aug_strength: str = "low", train_size: tuple[int, int] | None = None
    ) -> None:
        """Train on DATA_FRACTION of the (labelled) training patients at AUG_STRENGTH, resized to TRAIN_SIZE."""
        if not 0.0 < data_fraction <= 1.0:
            raise ValueError(f"data_fraction must be in (0, 1], got {data_fraction}")
        if aug_strength not in STRENGTHS:
            raise ValueError(f"aug_strength must be one of {list(STRENGTHS)}, got {aug_strength!r}")
        self.data_fraction, self.aug_strength, self.train_size = data_fraction, aug_strength, train_size

    def train_transform(self, seed: int | None):
        """The training augmentation at the current strength, resized to the stage's `train_size` if it differs."""
        size = self.train_size if self.train_size and tuple(self.train_size) != self.image_size else None
        return build_augmentation(self.aug_strength, seed, size)

    def train_dataloader(self):
        return self._loader(self.dataset("train", augment=True), train=True)

    def val_dataloader(self):
        return self._loader(self.dataset("val"), train=False)

    def test_dataloader(self):
        return self._loader(self.dataset("test"), train=False)
