"""Decoding one sample without torch: images (DICOM, NIfTI slices, PNG, JPEG, TIFF) to float32 in [0, 1], labels
to class indices."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from medseg.data.dicom import SliceMeta, read_frames, read_slice
from medseg.data.index import Sample
from medseg.data.intensity import Intensity, zscored
from medseg.data.labels import nifti_slice, read_png, seg_slice
from medseg.data.nifti import read_label_slice, read_nifti_slice


class MaskValueError(ValueError):
    """A label file holds values that are not classes: a configuration problem, never skipped."""


def load_image_meta(
    sample: Sample, in_channels: int, window=None, intensity: Intensity | None = None
) -> tuple[np.ndarray, SliceMeta | None]:
    """Decode an image to float32 [H, W, C] in [0, 1] (windowed, or normalised as INTENSITY says for its
    modality), with its slice metadata for DICOM and NIfTI."""
    scheme = intensity.scheme(sample.modality, sample.kind) if intensity else "window"
    if scheme != "window":
        values, meta = load_raw(sample, in_channels)
        stats = intensity.statistics(scheme, series_key(sample))  # type: ignore[union-attr]
        return model_input(zscored(values, stats), sample.image, in_channels), meta
    meta = None
    if sample.kind == "dicom":
        image, meta = read_slice(sample.image, window, frame=sample.frame)
    elif sample.kind == "nifti":
        image, meta = read_nifti_slice(sample.image, sample.frame, window)
    else:
        image = read_image(sample.image, in_channels)
    return model_input(image, sample.image, in_channels), meta


def load_raw(sample: Sample, in_channels: int) -> tuple[np.ndarray, SliceMeta | None]:
    """An image's raw values (modality values such as HU for DICOM, stored values for NIfTI) and metadata."""
    if sample.kind == "dicom":
        return read_slice(sample.image, frame=sample.frame, raw=True)
    if sample.kind == "nifti":
        return read_nifti_slice(sample.image, sample.frame, raw=True)
    return read_image(sample.image, in_channels), None


def series_key(sample: Sample) -> str:
    """The series whose statistics a sample's zscore uses: its own, or the image itself for a 2-D image."""
    return sample.series or f"{sample.image}#{sample.frame}"


def load_dicom_frames(
    path: Path, in_channels: int, window=None, raw: bool = False
) -> list[tuple[np.ndarray, SliceMeta]]:
    """Every frame of a DICOM file, decoded once, as model inputs float32 [H, W, C] in [0, 1] (RAW: modality
    values, normalised by the caller) with its metadata."""
    return [(model_input(image, path, in_channels), meta) for image, meta in read_frames(path, window, raw=raw)]


def model_input(image: np.ndarray, path: Path, in_channels: int) -> np.ndarray:
    """A decoded image as [H, W, IN_CHANNELS] (grey repeated, colour averaged); NaN or inf refused naming PATH."""
    if not np.isfinite(image).all():
        raise ValueError(f"{path}: pixel data hold NaN or infinite values")
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] != in_channels:
        image = np.repeat(image[..., :1], in_channels, axis=-1) if in_channels == 3 else image.mean(-1, keepdims=True)
    return image


def read_image(path: Path, in_channels: int) -> np.ndarray:
    """A PNG/JPEG/TIFF image as float32 in [0, 1] at its full bit depth (16-bit greyscale over 65535)."""
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: convert("L") would clip it
                return np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0.0, 1.0)
            if im.mode == "F":
                return np.asarray(im, dtype=np.float32)
            return np.asarray(im.convert("L" if in_channels == 1 else "RGB"), dtype=np.float32) / 255.0
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{path}: refused, image too large to decode ({exc})") from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from exc


def load_image(sample: Sample, in_channels: int, window=None) -> np.ndarray:
    """Decode an image to float32 [H, W, C] in [0, 1]."""
    return load_image_meta(sample, in_channels, window)[0]


def load_mask(
    sample: Sample,
    num_classes: int,
    mapping: Mapping[int, int] | None = None,
    threshold: int | None = None,
    ignore_index: int = 255,
    meta: SliceMeta | None = None,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read labels (PNG, NIfTI volume or DICOM SEG) as uint8 class indices, mapped and validated."""
    if sample.label_free:  # a context-only neighbour: nothing known about its labels
        return np.full(shape if shape is not None else read_image(sample.image, 1).shape[:2], ignore_index, np.uint8)
    name = sample.mask.name.lower()
    if sample.kind == "nifti":  # a label volume on its image volume's grid
        raw = read_label_slice(sample.mask, sample.frame)
    elif name.endswith((".nii", ".nii.gz")):
        raw = nifti_slice(sample.mask, meta, shape)  # type: ignore[arg-type]  # volumes come with their DICOM
    elif name.endswith(".dcm"):
        raw = seg_slice(sample.mask, meta)  # type: ignore[arg-type]
    else:
        raw = read_png(sample.mask)
    if threshold is not None:
        mask = (raw >= threshold).astype(np.int64)
    else:
        mask = raw.astype(np.int64)
        if mapping:
            out = mask.copy()
            for src, dst in mapping.items():
                out[mask == int(src)] = int(dst)
            mask = out
    bad = [int(v) for v in np.unique(mask) if v >= num_classes and v != ignore_index]
    if bad:
        raise MaskValueError(
            f"{sample.mask}: mask values {bad} are not classes 0..{num_classes - 1} "
            "(set data.mask_mapping or data.mask_threshold)"
        )
    return mask.astype(np.uint8)
