"""DICOM slice decoding: modality LUT, VOI window and photometric handling to float32 in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

# Window presets as (center, width) in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
}


@dataclass(frozen=True)
class SliceMeta:
    """Identifiers and geometry of one decoded slice."""

    patient_id: str
    series_uid: str
    sop_uid: str
    pixel_spacing: tuple[float, float] | None
    window: tuple[float, float]


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map values through the DICOM linear VOI function (PS3.3 C.11.2.1.2) to [0, 1]."""
    width = max(float(width), 1.0)
    out = ((values - (center - 0.5)) / (width - 1.0)) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _first(value) -> float:
    """Return the first element of a possibly multi-valued DICOM number."""
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return float(value[0])
    return float(value)


def resolve_window(ds: pydicom.Dataset, values: np.ndarray, window) -> tuple[float, float]:
    """Pick the VOI window: explicit (center, width), a named preset, the file's tags, or percentiles."""
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise ValueError(f"unknown window preset {window!r}; choose from {sorted(WINDOW_PRESETS)}")
        return WINDOW_PRESETS[window]
    if window is not None:
        center, width = window
        return float(center), float(width)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return _first(ds.WindowCenter), _first(ds.WindowWidth)
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo + hi) / 2.0, float(max(hi - lo, 1.0))


def read_slice(path: str | Path, window=None) -> tuple[np.ndarray, SliceMeta]:
    """Decode one single-frame DICOM file to a float32 [H, W] image in [0, 1] and its metadata."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for broken files
        raise ValueError(f"{path}: cannot decode DICOM pixel data ({exc})") from exc
    values = apply_modality_lut(stored, ds).astype(np.float32)
    center, width = resolve_window(ds, values, window)
    image = apply_window(values, center, width)
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        image = 1.0 - image
    spacing = tuple(float(v) for v in ds.PixelSpacing) if "PixelSpacing" in ds else None
    meta = SliceMeta(
        patient_id=str(ds.get("PatientID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        pixel_spacing=spacing,
        window=(center, width),
    )
    return image, meta
