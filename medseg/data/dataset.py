"""A map-style dataset of 2-D slices: decode once into a shared cache, then augment per access."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medseg.data.index import Sample
from medseg.data.partial_labels import labelled_vector


def seed_worker_augmentation(worker_id: int) -> None:
    """DataLoader worker_init_fn: give each worker its own augmentation stream, derived from the dataset seed."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "augment", None) if info else None
    if transform is not None and getattr(info.dataset, "seed", None) is not None:
        transform.set_random_seed(info.dataset.seed * 1000 + worker_id + 1)


class SliceDataset(Dataset):
    """Samples decoded and resized once (through a DecodeCache), stacked with their neighbouring slices where
    STACKS says, augmented on every access."""

    def __init__(
        self,
        samples: Sequence[Sample],
        prepare,
        cache,
        transform=None,
        seed: int | None = None,
        stacks: Sequence[Sequence[Sample]] | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.num_classes = num_classes  # given: items carry `labelled`, the classes their case contours
        self.stacks = stacks  # per sample, the samples of its context stack (medseg.data.context)
        self.prepare = prepare
        self.cache = cache
        self.augment = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded, resized image [H, W, C] float32 and mask [H, W] uint8, from the cache when present."""
        return self.load_sample(self.samples[index])

    def load_sample(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """Decoded, resized image and mask of any sample (a stack's neighbour too), through the cache."""
        entry = self.cache.get(sample)
        if entry is None:
            entry = self.cache.put(sample, *self.prepare(sample))
        return entry[0].astype(np.float32), entry[1]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image, mask = self.load(index)
        if self.stacks is not None and len(self.stacks[index]) > 1:  # one augmentation draw for the whole stack
            stack = self.stacks[index]
            image = np.concatenate([image if s is self.samples[index] else self.load_sample(s)[0] for s in stack], -1)
        item: dict[str, torch.Tensor | int] = {**to_tensors(image, mask, self.augment), "index": index}
        if self.num_classes is not None:
            item["labelled"] = torch.from_numpy(labelled_vector(self.samples[index].unlabelled, self.num_classes))
        return item


def to_tensors(image: np.ndarray, mask: np.ndarray, transform=None) -> dict[str, torch.Tensor]:
    """Augment (with TRANSFORM) an image [H, W, C] in [0, 1] and its mask; return CHW float and long tensors."""
    image = image.astype(np.float32, copy=False)
    if transform is not None:
        out = transform(image=image, mask=mask)
        image, mask = np.clip(out["image"], 0.0, 1.0), out["mask"]
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
    }
