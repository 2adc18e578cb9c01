"""NIfTI image volumes in the nnU-Net raw layout: dataset.json, imagesTr/<case>_<channel><ending>, labelsTr/.

Volumes are read through nibabel in its closest canonical orientation (RAS) and cut into axial slices shown
as DICOM viewers show them (rows anterior to posterior, columns patient right to left), each with its
geometry in patient coordinates (LPS), so series order, spacing and per-volume scores work as for DICOM.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from medseg.data.dicom import SliceMeta, auto_window, given_window
from medseg.data.geometry import displayed_slice_geometry
from medseg.data.index import Sample
from medseg.utils.privacy import register_source


def read_dataset_json(root: str | Path) -> dict:
    """ROOT/dataset.json, checked: `labels` maps names to the values 0..K-1 (background 0), `file_ending` set."""
    path = Path(root) / "dataset.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable nnU-Net dataset.json ({exc})") from None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    values = list(labels.values()) if isinstance(labels, dict) else []
    plain = values and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if not plain or sorted(values) != list(range(len(values))):
        raise ValueError(f"{path}: labels must map class names to the values 0..K-1 (region labels unsupported)")
    if not isinstance(meta.get("file_ending"), str) or not isinstance(meta.get("channel_names"), dict):
        raise ValueError(f"{path}: needs file_ending and channel_names")
    return meta


def nnunet_class_names(root: str | Path) -> list[str]:
    """Class names of an nnU-Net dataset by label value (background first)."""
    labels = read_dataset_json(root)["labels"]
    return sorted(labels, key=labels.get)


def index_nnunet(root: str | Path) -> list[Sample]:
    """One sample per axial slice of every labelled case; the case is the patient and the series."""
    root = Path(root)
    register_source(root)
    meta = read_dataset_json(root)
    ending, modality = meta["file_ending"], str(meta["channel_names"].get("0", ""))
    pattern = re.compile(rf"^(.+)_0000{re.escape(ending)}$")
    samples = []
    for image in sorted((root / "imagesTr").glob(f"*_0000{ending}")):
        match = pattern.match(image.name)
        if match is None:
            continue
        case, label = match.group(1), root / "labelsTr" / f"{match.group(1)}{ending}"
        if not label.is_file():
            continue
        slices = check_label_grid(image, label)
        samples += [Sample(image, label, case, "nifti", k, case, k, modality) for k in range(slices)]
    if not samples:
        raise FileNotFoundError(f"{root}: no imagesTr/<case>_0000{ending} with a labelsTr/<case>{ending}")
    return samples


def check_label_grid(image: Path, label: Path) -> int:
    """The number of axial slices of IMAGE; refuses a LABEL on another grid (shape or affine), naming it."""
    import nibabel as nib

    try:
        first, second = nib.load(image), nib.load(label)
    except Exception as exc:  # nibabel raises several types for a broken file
        raise ValueError(f"{image}: not a readable NIfTI pair with {label.name} ({exc})") from None
    if first.shape[:3] != second.shape[:3]:
        raise ValueError(f"{label}: shape {second.shape[:3]} does not match its image's {first.shape[:3]}")
    if not np.allclose(first.affine, second.affine, atol=1e-3):
        raise ValueError(f"{label}: its affine does not match its image's (another grid or orientation)")
    superior = np.flatnonzero(nib.orientations.io_orientation(first.affine)[:, 0] == 2)[0]  # the axis along S
    return int(first.shape[superior])


@lru_cache(maxsize=4)
def canonical(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume's data (first 3 axes) and affine in the closest canonical (RAS) orientation."""
    import nibabel as nib

    volume = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(volume.dataobj)
    return (data if data.ndim == 3 else data[..., 0]), volume.affine


def display_slice(volume: np.ndarray, k: int) -> np.ndarray:
    """Axial slice K of a RAS volume as a viewer shows it: rows anterior to posterior, columns right to left."""
    return volume[::-1, ::-1, k].T


def slice_meta(path: Path, k: int, window) -> SliceMeta:
    """Geometry of displayed slice K (LPS position of its first pixel, row and column directions, spacing)."""
    data, affine = canonical(str(path))
    position, orientation, spacing = displayed_slice_geometry(affine, data.shape, k)
    case = path.name.split("_0000")[0]
    return SliceMeta(case, case, f"{case}_{k}", spacing, window, k, position, orientation)


def read_nifti_slice(path: Path, k: int, window=None, raw: bool = False) -> tuple[np.ndarray, SliceMeta]:
    """Slice K of an image volume as float32 in [0, 1] (a window preset or [center, width], e.g. in HU; else
    the 0.5-99.5 percentile range of the slice; RAW: the stored values) with its geometry."""
    values = display_slice(canonical(str(path))[0], k).astype(np.float64)
    if raw:
        return values.astype(np.float32), slice_meta(path, k, None)
    image, used = given_window(values, window) or auto_window(values)
    return image, slice_meta(path, k, used if window is not None else None)


def read_label_slice(path: Path, k: int) -> np.ndarray:
    """Slice K of a label volume on its image's grid, displayed as the image is."""
    return display_slice(canonical(str(path))[0], k)


def slice_count(path: Path) -> int:
    """Axial slices of a NIfTI image volume in canonical orientation."""
    return int(canonical(str(path))[0].shape[2])


def label_volume(source: Path, masks: list[np.ndarray]):
    """A NIfTI label image on SOURCE's grid and in its orientation from displayed slice MASKS (read_nifti_slice's
    order): the inverse of display_slice, then back from canonical to the file's own axes."""
    import nibabel as nib

    image = nib.load(source)
    data, affine = canonical(str(source))
    volume = np.zeros(data.shape[:3], np.uint8)
    for k, mask in enumerate(masks):
        volume[::-1, ::-1, k] = mask.T
    labels = nib.Nifti1Image(volume, affine)
    original = nib.orientations.io_orientation(image.affine)
    back = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), original)
    return labels.as_reoriented(back)
