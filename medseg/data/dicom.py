"""DICOM decoding to float32 in [0, 1]: modality LUT, VOI window or LUT, photometric and multi-frame handling."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, pixel_array

from medseg.utils.cli import first_line

log = logging.getLogger(__name__)

# Window presets as (center, width) in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
}
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class NoPixelData(ValueError):
    """A DICOM object without an image (SR, RTSTRUCT, presentation state...)."""


@dataclass(frozen=True)
class SliceMeta:
    """Identifiers, geometry and the window used for one decoded frame."""

    patient_id: str
    series_uid: str
    sop_uid: str
    pixel_spacing: tuple[float, float] | None
    window: tuple[float, float] | str | None
    frame: int = 0
    position: tuple[float, ...] | None = None
    orientation: tuple[float, ...] | None = None
    modality: str = ""


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map values through the DICOM linear VOI function (PS3.3 C.11.2.1.2) to [0, 1]."""
    if float(width) <= 1.0:  # the standard's step function: below the centre 0, above it 1
        return (values > center - 0.5).astype(np.float32)
    out = ((values - (center - 0.5)) / (float(width) - 1.0)) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _pick(value, index: int = 0) -> float:
    """Element INDEX (or the last) of a possibly multi-valued DICOM number."""
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return float(value[min(index, len(value) - 1)])
    return float(value)


def _frame_item(ds: pydicom.Dataset, frame: int, sequence: str) -> pydicom.Dataset | None:
    """The functional-group item SEQUENCE for FRAME (per-frame first, then shared), if present."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        seq = items[i].get(sequence) if items and len(items) > i else None
        if seq:
            return seq[0]
    return None


def _modality(ds: pydicom.Dataset, stored: np.ndarray, frame: int) -> np.ndarray:
    """Stored values -> modality values (RescaleSlope/Intercept, Modality LUT Sequence, per-frame groups)."""
    item = _frame_item(ds, frame, "PixelValueTransformationSequence")
    if item is not None and "RescaleSlope" in item:
        return stored.astype(np.float64) * float(item.RescaleSlope) + float(item.get("RescaleIntercept", 0.0))
    return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)


def given_window(values: np.ndarray, window) -> tuple[np.ndarray, tuple[float, float]] | None:
    """VALUES through a window the user gave (a preset name or [center, width]): (image in [0, 1], (center,
    width)); None when WINDOW is None."""
    if window is None:
        return None
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise ValueError(f"unknown window preset {window!r}; choose from {sorted(WINDOW_PRESETS)}")
        center, width = WINDOW_PRESETS[window]
    else:
        center, width = (float(v) for v in window)
    return apply_window(values, center, width), (center, width)


def _voi(ds: pydicom.Dataset, values: np.ndarray, frame: int, window, voi_index: int):
    """Apply the VOI stage; returns (image in [0, 1], window description)."""
    given = given_window(values, window)
    if given is not None:
        return given
    item = _frame_item(ds, frame, "FrameVOILUTSequence")
    source = item if item is not None and "WindowCenter" in item else ds
    if "WindowCenter" in source and "WindowWidth" in source:
        center, width = _pick(source.WindowCenter, voi_index), _pick(source.WindowWidth, voi_index)
        return apply_window(values, center, width), (center, width)
    if "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[min(voi_index, len(ds.VOILUTSequence) - 1)]
        out = apply_voi(values, ds, index=min(voi_index, len(ds.VOILUTSequence) - 1)).astype(np.float64)
        bits = int(lut.LUTDescriptor[2]) or 16
        return np.clip(out / (2**bits - 1), 0.0, 1.0).astype(np.float32), "VOILUTSequence"
    return auto_window(values)


def auto_window(values: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """No window in the file: scale the 0.5-99.5 percentile range to [0, 1]; a constant image is 0 everywhere."""
    if not np.isfinite(values).all():
        return values.astype(np.float32), (float("nan"), float("nan"))  # refused by the caller, naming the file
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if hi <= lo:
        return np.zeros(values.shape, np.float32), (lo, 0.0)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32), ((lo + hi) / 2.0, hi - lo)


def _colour(ds: pydicom.Dataset, arr: np.ndarray) -> np.ndarray:
    """RGB (YBR already converted by pydicom) or PALETTE COLOR frame -> float32 [H, W, 3] in [0, 1]."""
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds).astype(np.float64)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return (rgb / (2**bits - 1)).astype(np.float32)
    return (arr.astype(np.float64) / (2 ** int(ds.BitsStored) - 1)).clip(0, 1).astype(np.float32)


def frame_geometry(ds: pydicom.Dataset, frame: int):
    """(pixel spacing, position, orientation) of a frame, from per-frame groups or the top level."""
    measures = _frame_item(ds, frame, "PixelMeasuresSequence")
    position = _frame_item(ds, frame, "PlanePositionSequence")
    orientation = _frame_item(ds, frame, "PlaneOrientationSequence")
    spacing_src = measures if measures is not None and "PixelSpacing" in measures else ds
    spacing = tuple(float(v) for v in spacing_src.PixelSpacing) if "PixelSpacing" in spacing_src else None
    pos_src = position if position is not None else ds
    ipp = tuple(float(v) for v in pos_src.ImagePositionPatient) if "ImagePositionPatient" in pos_src else None
    ori_src = orientation if orientation is not None else ds
    iop = tuple(float(v) for v in ori_src.ImageOrientationPatient) if "ImageOrientationPatient" in ori_src else None
    return spacing, ipp, iop


def read_dataset(path: str | Path) -> pydicom.Dataset:
    """Read a DICOM file with pixel data; NoPixelData for objects without an image, ValueError if unreadable."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {first_line(exc)})") from exc
    if not any(k in ds for k in PIXEL_KEYWORDS):
        raise NoPixelData(f"{path}: no pixel data ({ds.get('Modality', '?')} {ds.get('SOPClassUID', '')!s})")
    return ds


def read_frames(
    path: str | Path, window=None, voi_index: int = 0, frames=None, raw: bool = False
) -> list[tuple[np.ndarray, SliceMeta]]:
    """Decode every frame (or the given FRAMES) of a DICOM file to ([H, W] or [H, W, 3] float32, SliceMeta); RAW:
    greyscale frames as modality values (e.g. HU; MONOCHROME1 negated so that brighter is higher), no window."""
    path = Path(path)
    ds = read_dataset(path)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1))
    wanted = list(range(count)) if frames is None else list(frames)
    try:
        if len(wanted) < count:  # decode only the requested frames of a multi-frame file
            pixels = {i: pixel_array(ds, index=i) for i in wanted}
        else:
            pixels = ds.pixel_array if count > 1 else ds.pixel_array[None]  # type: ignore[assignment]
    except Exception as exc:  # missing codec, truncated or corrupt data
        raise ValueError(f"{path}: cannot decode pixel data ({type(exc).__name__}: {first_line(exc)})") from exc
    out = []
    for index in wanted:
        arr = pixels[index]
        inverted = ds.get("PhotometricInterpretation") == "MONOCHROME1"
        if samples == 1 and ds.get("PhotometricInterpretation") != "PALETTE COLOR" and raw:
            values = _modality(ds, arr, index)
            image, used = (-values if inverted else values), None
        elif samples == 1 and ds.get("PhotometricInterpretation") != "PALETTE COLOR":
            image, used = _voi(ds, _modality(ds, arr, index), index, window, voi_index)
            if inverted:
                image = 1.0 - image
        else:
            image, used = _colour(ds, arr), None
        spacing, ipp, iop = frame_geometry(ds, index)
        meta = SliceMeta(
            patient_id=str(ds.get("PatientID", "")),
            series_uid=str(ds.get("SeriesInstanceUID", "")),
            sop_uid=str(ds.get("SOPInstanceUID", "")),
            pixel_spacing=spacing,
            window=used,
            frame=index,
            position=ipp,
            orientation=iop,
            modality=str(ds.get("Modality", "")),
        )
        out.append((np.ascontiguousarray(image, dtype=np.float32), meta))
    return out


def read_slice(
    path: str | Path, window=None, frame: int = 0, voi_index: int = 0, raw: bool = False
) -> tuple[np.ndarray, SliceMeta]:
    """Decode one frame of a DICOM file to float32 in [0, 1] (RAW: modality values) and its metadata."""
    return read_frames(path, window, voi_index, frames=[frame], raw=raw)[0]
