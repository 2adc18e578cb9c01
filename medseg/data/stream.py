"""Training data streamed from a medseg-prepare folder with litdata: sharded over ranks and nodes, resumable."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset

from medseg.data.augment import size_pair
from medseg.data.dataset import seed_worker_augmentation, to_tensors
from medseg.data.loaders import SplitLoaders, count_pixels, loader_workers, pin_memory
from medseg.data.prepared import SPLITS, read_metadata, verify_chunks
from medseg.data.split import subset_size

log = logging.getLogger(__name__)
logging.getLogger("litdata").setLevel(logging.WARNING)  # its per-dataset INFO lines (cache size, mmap) are noise here
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")  # litdata shards per worker


class SegmentationStream(StreamingDataset):
    """A prepared split as a StreamingDataset: the first LIMIT items only, augmented in the loader workers."""

    def __init__(self, input_dir: str, transform=None, limit: int | None = None, **kwargs) -> None:
        super().__init__(input_dir, **kwargs)
        if limit is not None:
            self._keep_first(limit)
        self.augment = transform

    def _keep_first(self, limit: int) -> None:
        """Restrict to the first LIMIT items (whole chunks, then part of one), as litdata's own subsample does."""
        files: list[str] = []
        roi: list[tuple[int, int]] = []
        chunks = zip(self.subsampled_files, self.region_of_interest, strict=True)  # type: ignore[has-type]
        for name, (start, end) in chunks:
            if limit <= 0:
                break
            take = min(end - start, limit)
            files.append(name)
            roi.append((start, start + take))
            limit -= take
        self.subsampled_files, self.region_of_interest = files, roi

    def __getitem__(self, index) -> dict:
        item = super().__getitem__(index)
        tensors = to_tensors(np.asarray(item["image"]), np.asarray(item["mask"]), self.augment)
        out = {**tensors, "id": int(item["id"]), "patient": item["patient"]}
        if "labelled" in item:  # folders prepared before partial labels have every class contoured
            out["labelled"] = torch.from_numpy(np.asarray(item["labelled"]).astype(bool))
        return out


class StreamDataModule(SplitLoaders, L.LightningDataModule):
    """Train, validate and test from a folder written by medseg-prepare (local path or a litdata URL).

    Args:
        root: the prepared folder.
        class_names, in_channels, context_slices, spacing, image_size, size_policy, window, normalize: checked
            against the prepared settings.
        ignore_index: mask value ignored by loss and metrics.
        seed: shuffle and augmentation seed (the split was fixed when the data were prepared).
        batch_size, num_workers: loader settings ("auto" workers: 0 on CPU, up to 8 per GPU process).
        labelled_fraction: share of training patients available at all; a stage's data_fraction is a share of
            these (`set_stage`).
        cache_dir, max_cache_size: litdata's local chunk cache for remote folders.
        split_file: accepted for config compatibility; the split lives in the prepared folder.
    """

    def __init__(
        self,
        root: str,
        class_names: Sequence[str] | None = None,
        in_channels: int | None = None,
        context_slices: int | None = None,
        spacing: Sequence[float] | None = None,
        image_size: int | Sequence[int] | None = None,
        size_policy: str | None = None,
        window: str | Sequence[float] | None = None,
        normalize: str | None = None,
        ignore_index: int = 255,
        seed: int = 42,
        batch_size: int = 8,
        num_workers: int | str = "auto",
        labelled_fraction: float = 1.0,
        cache_dir: str | None = None,
        max_cache_size: str | None = None,
        split_file: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.root = str(root)
        self.meta = read_metadata(self.root)
        settings = self.meta["settings"]
        self._check("class_names", class_names, settings["class_names"])
        self._check("in_channels", in_channels, settings["in_channels"])
        self._check("context_slices", context_slices, settings.get("context_slices", 0))
        if spacing is not None:
            self._check("spacing", spacing, settings.get("spacing"))
        self._check("image_size", None if image_size is None else list(size_pair(image_size)), settings["image_size"])
        self._check("size_policy", size_policy, settings["size_policy"])
        self._check("window", window, settings["window"])
        self._check("normalize", normalize, settings.get("normalize", "window"))
        self.class_names = list(settings["class_names"])
        self.image_size = size_pair(settings["image_size"])

    def _check(self, key: str, given, prepared) -> None:
        if given is not None and np.atleast_1d(given).tolist() != np.atleast_1d(prepared).tolist():
            raise ValueError(f"{self.root}: prepared with {key}={prepared}, but the config asks for {given}")

    @property
    def num_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.class_names)

    def setup(self, stage: str | None = None) -> None:
        """Check every chunk is present and whole before the first step (local folders)."""
        if "://" in self.root:
            return
        for split in SPLITS:
            problem = verify_chunks(self.root, split, self.meta)
            if problem:
                raise ValueError(problem)

    def volumes(self, split: str) -> list[dict]:
        """The volumes of a split as prepared: name (pseudonym), items (item ids in slice order), spacing."""
        return self.meta["splits"][split].get("volumes", [])

    def state_dict(self) -> dict:
        """What checkpoints keep of the data: the intensity scheme and its dataset statistics, as prepared."""
        return {"intensity": self.meta.get("intensity") or {"normalize": "window", "ct": None}}

    def dataset_record(self) -> dict[str, str]:
        """The data a tracker records: name (the prepared folder's), digest (of its sources) and source."""
        name = self.root.rstrip("/").rsplit("/", 1)[-1]
        return {"name": name, "digest": self.meta["source"][:16], "source": self.root}

    def train_items(self) -> int:
        """Items of the current data_fraction of the labelled patients: the first patients' slices in subset order."""
        counts = self.meta["splits"]["train"]["patient_items"]
        labelled = self.hparams.labelled_fraction
        if not 0.0 < labelled <= 1.0:
            raise ValueError(f"labelled_fraction must be in (0, 1], got {labelled}")
        # nested subsets are prefixes of one patient order, stored in that order by medseg-prepare
        return int(sum(counts[: subset_size(len(counts), self.data_fraction * labelled)]))

    def dataset(self, split: str, augment: bool = False) -> SegmentationStream:
        """A split as a stream: the training split shuffled per epoch and cut to the data fraction."""
        train = split == "train"
        return SegmentationStream(
            f"{self.root.rstrip('/')}/{split}",
            transform=self.train_transform(self.hparams.seed) if augment else None,
            limit=self.train_items() if train else None,
            shuffle=train,
            drop_last=train,  # every rank the same number of training batches; never drop evaluation samples
            seed=self.hparams.seed,
            cache_dir=self.hparams.cache_dir,
            max_cache_size=self.hparams.max_cache_size,
        )

    def _loader(self, dataset: SegmentationStream, train: bool) -> StreamingDataLoader:
        trainer = self.trainer
        workers = loader_workers(self.hparams.num_workers, trainer)
        loader = StreamingDataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            num_workers=workers,
            drop_last=train,
            pin_memory=pin_memory(trainer),
            persistent_workers=workers > 0,
            worker_init_fn=seed_worker_augmentation if workers else None,
        )
        if train and trainer is not None:
            loader.current_epoch = trainer.current_epoch  # a fresh loader each epoch: shuffle by the trainer's epoch
        return loader

    def class_pixel_counts(self) -> np.ndarray:
        """Pixel count per class over the training masks (one streamed pass), ignoring ignore_index."""
        masks = (batch["mask"].numpy() for batch in self._loader(self.dataset("train"), train=False))
        return count_pixels(masks, self.num_classes, self.hparams.ignore_index)
