"""LightningDataModule: index -> patient split -> data_fraction subset -> augment -> batches."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from medseg.data.augment import size_pair
from medseg.data.cache import DecodeCache
from medseg.data.context import series_stacks
from medseg.data.dataset import SliceDataset, seed_worker_augmentation
from medseg.data.decode import MaskValueError, load_mask
from medseg.data.index import Sample, source_fingerprint
from medseg.data.intensity import Intensity
from medseg.data.loaders import SplitLoaders, count_pixels, loader_workers, pin_memory
from medseg.data.partial_labels import mark_missing, read_missing_labels
from medseg.data.sources import decode_sample, index_layout, sample_intensity, select_files
from medseg.data.split import fold_split, split_patients, subset_patients
from medseg.data.synthetic import CLASS_NAMES as DEMO_CLASSES
from medseg.data.synthetic import ensure_demo_dataset
from medseg.data.volume_grid import split_volumes
from medseg.utils.io import atomic_path
from medseg.utils.privacy import pseudonym, pseudonymous_path

log = logging.getLogger(__name__)


class SegmentationDataModule(SplitLoaders, L.LightningDataModule):
    """2-D segmentation data from a DICOM tree, a plain image folder, or the embedded demo dataset.

    Args:
        root: data folder (images/ and masks/); None for the embedded demo dataset.
        layout: "dicom" (PatientID from the tags), "folder" (patient from `patient_regex`) or "nnunet" (NIfTI
            volumes: imagesTr/, labelsTr/, dataset.json; the case is the patient).
        class_names: class names, background first.
        in_channels: channels of each slice (grey images are repeated, colour averaged to fit).
        context_slices: k: each slice comes with slices z-k..z+k of its series as 2k+1 stacked images.
        spacing: [row_mm, col_mm]: resample each slice in plane to this pixel spacing before the size policy
            (images linear, labels nearest); None keeps the files' pixels.
        image_size: training size, an int or (height, width).
        size_policy: "stretch" or "letterbox" (keep the aspect ratio and pad).
        window: DICOM VOI window: None (from the file), a preset name or [center, width].
        normalize: intensities: "window" (the VOI window), "ct" (clipped, z-scored with the training foreground's
            statistics, kept in checkpoints), "zscore" (per series) or "auto" (by Modality); medseg.data.intensity.
        mask_mapping: mask value -> class index; mask_threshold: binarise masks at this value instead.
        ignore_index: mask value ignored by loss and metrics.
        missing_labels: a JSON file (relative to root, or absolute) of case -> class names its labels leave out;
            those classes are unknown there, not background (medseg.data.partial_labels).
        patient_regex: first group of this regex on the file name is the patient (folder layout).
        include_regex, exclude_regex: keep only images whose file name matches / does not match (e.g. one site).
        split: train/val/test fractions of patients; seed: the split's and the subsets' seed.
        num_folds, fold: patient-level K-fold over train+val (fold k validates); the test patients stay fixed.
        batch_size, num_workers: DataLoader settings ("auto" workers: 0 on CPU, up to 8 per GPU).
        labelled_fraction: share of training patients available at all (label-budget studies); the stages'
            data fractions are taken of these (`set_stage`).
        cache_dir: where the demo dataset is generated; decode_cache: decoded-slice cache folder or None.
        preload: decode everything at setup; strict: stop at the first unreadable file.
        split_file: where the split is written (keyed pseudonyms); None to skip.
        max_dropped: undecodable samples each split may lose before setup fails (None: any).
    """

    def __init__(
        self,
        root: str | None = None,
        layout: str = "dicom",
        class_names: Sequence[str] = DEMO_CLASSES,
        in_channels: int = 1,
        context_slices: int = 0,
        spacing: Sequence[float] | None = None,
        image_size: int | Sequence[int] = 128,
        size_policy: str = "stretch",
        window: str | Sequence[float] | None = None,
        normalize: str = "auto",
        mask_mapping: Mapping[int, int] | None = None,
        mask_threshold: int | None = None,
        ignore_index: int = 255,
        missing_labels: str | None = None,
        patient_regex: str = r"^(.*)$",
        include_regex: str | None = None,
        exclude_regex: str | None = None,
        split: Sequence[float] = (0.7, 0.15, 0.15),
        seed: int = 42,
        num_folds: int | None = None,
        fold: int = 0,
        batch_size: int = 8,
        num_workers: int | str = "auto",
        labelled_fraction: float = 1.0,
        cache_dir: str = "~/.cache/medseg",
        decode_cache: str | None = None,
        preload: bool = True,
        strict: bool = False,
        split_file: str | None = None,
        max_dropped: Mapping[str, int | None] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.image_size = size_pair(image_size)
        self.class_names = list(class_names)
        self.splits: dict[str, list[Sample]] = {}
        self._cache: DecodeCache | None = None
        self.intensity = Intensity()
        self._train_loaders = 0  # a new augmentation seed for every (re)loaded training epoch

    @property
    def num_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.class_names)

    def setup(self, stage: str | None = None) -> None:
        """Index the data, split by patient and write the split file (once)."""
        if self.splits:
            return
        hp = self.hparams
        root = Path(hp.root).expanduser() if hp.root else ensure_demo_dataset(hp.cache_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"data root not found: {root}")
        samples = index_layout(root, hp.layout, hp.strict, hp.patient_regex)
        samples = select_files(samples, hp.include_regex, hp.exclude_regex, root)
        if hp.missing_labels:
            samples = mark_missing(samples, read_missing_labels(root / hp.missing_labels, self.class_names))
        parts = split_patients([s.patient for s in samples], hp.split, hp.seed)
        if hp.num_folds:
            parts = fold_split(parts, hp.num_folds, hp.fold, hp.seed)
        self.patients = parts
        self.splits = {name: [s for s in samples if s.patient in set(ids)] for name, ids in parts.items()}
        shared = {s.patient for s in self.splits["train"]} & {
            s.patient for s in self.splits["val"] + self.splits["test"]
        }
        if shared or {s.patient for s in self.splits["val"]} & {s.patient for s in self.splits["test"]}:
            raise RuntimeError("a patient landed in two splits; the split is by the same key it checks")
        self.root = root
        self.intensity = sample_intensity(
            samples, hp.normalize, window=hp.window, train=self.labelled_samples(), labels=self._foreground
        )
        self._prepare = partial(
            decode_sample,
            in_channels=hp.in_channels,
            window=hp.window,
            size=self.image_size,
            size_policy=hp.size_policy,
            num_classes=self.num_classes,
            mapping=hp.mask_mapping,
            threshold=hp.mask_threshold,
            ignore_index=hp.ignore_index,
            spacing=None if hp.spacing is None else [float(v) for v in hp.spacing],
            intensity=self.intensity,
        )
        self._cache = DecodeCache.for_decoder(self._prepare, hp.decode_cache)
        if hp.preload:
            self.preload()
        log.info(
            "data %s: %s", root, {k: f"{len(parts[k])} patients / {len(v)} slices" for k, v in self.splits.items()}
        )
        if hp.split_file:
            self.write_split(hp.split_file)

    def _foreground(self, sample: Sample, values: np.ndarray, meta) -> np.ndarray:
        """A training sample's foreground mask (mapped labels above background, ignore_index left out)."""
        hp = self.hparams
        classes, shape = self.num_classes, values.shape
        mask = load_mask(sample, classes, hp.mask_mapping, hp.mask_threshold, hp.ignore_index, meta, shape)
        return (mask > 0) & (mask != hp.ignore_index)

    def volumes(self, split: str) -> list[dict]:
        """The volumes of a split for per-volume scores: name, items (dataset indices in slice order), spacing."""
        hp = self.hparams
        return split_volumes(self.splits[split], self.image_size, hp.size_policy, hp.spacing)

    def state_dict(self) -> dict:
        """What checkpoints keep of the data: the intensity scheme and its dataset statistics."""
        return {"intensity": self.intensity.stored()}

    def preload(self) -> None:
        """Decode every sample once into the cache; failures are logged per file and dropped (raised if strict).

        `max_dropped` caps the samples a split may lose (default: none for val and test, any for train).
        """
        failures: dict[str, list[Sample]] = {name: [] for name in self.splits}
        for name, items in self.splits.items():
            dataset = SliceDataset(items, self._prepare, self._cache)
            kept = []
            for i, sample in enumerate(items):
                try:
                    dataset.load(i)
                    kept.append(sample)
                except (ValueError, OSError) as exc:
                    if self.hparams.strict or isinstance(exc, MaskValueError):
                        raise
                    log.error("%s", exc)
                    failures[name].append(sample)
            self.splits[name] = kept
        empty = [name for name, items in self.splits.items() if not items and name != "test"]
        if empty:
            raise ValueError(f"no decodable samples left in split(s) {empty}; see the errors above")
        limits = {"train": None, "val": 0, "test": 0, **(self.hparams.max_dropped or {})}
        for name, dropped in failures.items():
            if not dropped:
                continue
            total = len(dropped) + len(self.splits[name])
            log.warning("%s: %d of %d samples could not be decoded and were left out", name, len(dropped), total)
            if limits.get(name) is not None and len(dropped) > limits[name]:
                raise ValueError(
                    f"{len(dropped)} {name} samples could not be decoded (data.max_dropped.{name}={limits[name]}); "
                    f"first: {dropped[0].image}"
                )

    def write_split(self, path: str | os.PathLike) -> None:
        """Write the split as JSON, atomically: keyed pseudonyms of patients and of every image path component."""
        payload = {
            "seed": self.hparams.seed,
            "fractions": list(self.hparams.split),
            "folds": {"num_folds": self.hparams.num_folds, "fold": self.hparams.fold}
            if self.hparams.num_folds
            else None,
            "splits": {
                name: [
                    {
                        "patient": pseudonym(s.patient),
                        "image": pseudonymous_path(s.image.relative_to(self.root)),
                        "frame": s.frame,
                    }
                    for s in items
                ]
                for name, items in self.splits.items()
            },
        }
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(payload, indent=1))

    def dataset_record(self) -> dict[str, str]:
        """The data a tracker records: name (the data folder's), digest (of the source files) and source."""
        samples = [s for items in self.splits.values() for s in items]
        name = self.root.name if self.hparams.root else "demo"
        return {"name": name, "digest": source_fingerprint(samples)[:16], "source": str(self.root)}

    def train_samples(self, fraction: float | None = None) -> list[Sample]:
        """Training samples of the current data_fraction, or of FRACTION of the labelled patients (a nested,
        stable subset of patients)."""
        share = self.data_fraction if fraction is None else fraction
        keep = set(subset_patients(self.patients["train"], share * self.hparams.labelled_fraction, self.hparams.seed))
        return [s for s in self.splits["train"] if s.patient in keep]

    def labelled_samples(self) -> list[Sample]:
        """The training samples whose labels may be read at all (data.labelled_fraction of the patients)."""
        return self.train_samples(1.0)

    def dataset(self, split: str, augment: bool = False) -> SliceDataset:
        """A dataset over one split sharing the decode cache; augmentation at the current strength."""
        samples = self.train_samples() if split == "train" else self.splits[split]
        self._train_loaders += augment  # a new augmentation stream for every (re)loaded training epoch
        seed = self.hparams.seed * 10007 + self._train_loaders
        transform = self.train_transform(seed) if augment else None
        stacks = series_stacks(samples, self.hparams.context_slices) if self.hparams.context_slices else None
        return SliceDataset(samples, self._prepare, self._cache, transform, seed, stacks, self.num_classes)

    def _loader(self, dataset: SliceDataset, train: bool) -> DataLoader:
        workers = loader_workers(self.hparams.num_workers, self.trainer)
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > self.hparams.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=pin_memory(self.trainer),
            worker_init_fn=seed_worker_augmentation if workers else None,
        )

    def class_pixel_counts(self) -> np.ndarray:
        """Pixel count per class over the labelled training masks (after resizing), ignoring ignore_index."""
        ds = SliceDataset(self.labelled_samples(), self._prepare, self._cache)
        return count_pixels((ds.load(i)[1] for i in range(len(ds))), self.num_classes, self.hparams.ignore_index)
