"""A data root in its layout: its samples (indexed, selected by file name), and one sample decoded for training."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medseg.data.decode import load_image_meta, load_mask, load_raw, series_key
from medseg.data.index import Sample, index_dicom, index_folder
from medseg.data.intensity import MAX_SLICES, Intensity, foreground_statistics, series_statistics
from medseg.data.nifti import index_nnunet
from medseg.data.sizing import fit_to_size
from medseg.data.spacing import to_spacing

LAYOUTS = ("dicom", "folder", "nnunet")


def detect_layout(root: Path) -> str:
    """The layout of a data root: nnunet (dataset.json), dicom (.dcm files under images/) or folder."""
    if (root / "dataset.json").is_file():
        return "nnunet"
    return "dicom" if any((root / "images").rglob("*.dcm")) else "folder"


def index_layout(root: Path, layout: str, strict: bool = False, patient_regex: str = r"^(.*)$") -> list[Sample]:
    """The samples of a data root in LAYOUT: dicom (images/ + masks/), folder (image files) or nnunet (NIfTI)."""
    if layout == "dicom":
        return index_dicom(root, strict)
    if layout == "folder":
        return index_folder(root, patient_regex)
    if layout == "nnunet":
        return index_nnunet(root)
    raise ValueError(f"data.layout={layout!r}: choose one of {', '.join(LAYOUTS)}")


def select_files(samples: list[Sample], include: str | None, exclude: str | None, root: Path) -> list[Sample]:
    """Samples whose image file name matches INCLUDE and not EXCLUDE (regular expressions, searched)."""
    if include is None and exclude is None:
        return samples
    inc, exc = (re.compile(r) if r else None for r in (include, exclude))
    kept = [s for s in samples if (not inc or inc.search(s.image.name)) and not (exc and exc.search(s.image.name))]
    if not kept:
        raise ValueError(f"{root}: no image file name matches include_regex={include!r}, exclude_regex={exclude!r}")
    return kept


def decode_sample(
    sample: Sample,
    *,
    in_channels,
    window,
    size,
    size_policy,
    num_classes,
    mapping,
    threshold,
    ignore_index,
    spacing=None,
    intensity: Intensity | None = None,
    with_meta: bool = False,
):
    """Decode, validate and resize one sample: (image, mask), plus its SliceMeta WITH_META (picklable for workers)."""
    image, meta = load_image_meta(sample, in_channels, window, intensity)
    mask = load_mask(sample, num_classes, mapping, threshold, ignore_index, meta, image.shape[:2])
    if image.shape[:2] != mask.shape:
        raise ValueError(f"{sample.mask}: mask size {mask.shape} differs from image size {image.shape[:2]}")
    image, mask = to_spacing(image, mask, meta.pixel_spacing if meta is not None else None, spacing, sample.image)
    image, mask = fit_to_size(image, mask, size, size_policy)
    return (image, mask, meta) if with_meta else (image, mask)


def readable(read, items):
    """READ(item) for each of ITEMS that can be read; the others are refused, naming the file, when decoded."""
    for item in items:
        try:
            yield read(item)
        except (ValueError, OSError):
            continue


def raw_values(sample: Sample) -> np.ndarray:
    """A sample's raw values as one grey channel."""
    return load_raw(sample, 1)[0]


def sample_intensity(
    samples: list[Sample], normalize: str, ct=None, window=None, train: list[Sample] | None = None, labels=None
) -> Intensity:
    """The Intensity of SAMPLES under NORMALIZE: zscore statistics of each series they hold; CT statistics CT (a
    model's; None without TRAIN refuses CT inputs) or else from TRAIN's foreground (LABELS(sample, raw values,
    meta): its foreground mask) clipped to WINDOW where given."""
    model = Intensity(normalize, ct)
    schemes = {s: model.scheme(s.modality, s.kind) for s in samples}
    groups: dict[str, list[Sample]] = {}
    for sample in (s for s in samples if schemes[s] == "zscore"):
        groups.setdefault(series_key(sample), []).append(sample)
    per_series = {  # in series order, as a whole series is read at prediction
        key: series_statistics(readable(raw_values, sorted(items, key=lambda s: s.slice_index)))
        for key, items in groups.items()
    }
    if ct is None and "ct" in schemes.values():
        if train is None:
            raise ValueError("this model has no CT intensity statistics (it was trained without data.normalize=ct)")
        chosen = [s for s in train if model.scheme(s.modality, s.kind) == "ct"]
        chosen = chosen[:: max(1, -(-len(chosen) // MAX_SLICES))]
        ct = foreground_statistics(readable(lambda s: labelled(s, labels), chosen), window)
    return Intensity(normalize, ct, per_series)


def labelled(sample: Sample, labels) -> tuple[np.ndarray, np.ndarray]:
    """(raw values, foreground mask) of a training sample; LABELS(sample, values, meta) gives the mask."""
    values, meta = load_raw(sample, 1)
    return values, labels(sample, values, meta)
