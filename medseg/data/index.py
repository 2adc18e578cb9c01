"""Find image/mask pairs and their patients in the DICOM and plain-folder layouts."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pydicom

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class Sample:
    """One 2-D image with its mask and the patient it belongs to."""

    image: Path
    mask: Path
    patient: str
    kind: str  # "dicom" or "image"


def hash_id(value: str, salt: str = "medseg") -> str:
    """Short salted SHA-256 of an identifier, safe to write to logs and file names."""
    return hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()[:12]


def _masks_by_stem(mask_dir: Path) -> dict[str, Path]:
    """Map mask file stems to paths, refusing duplicate stems."""
    masks: dict[str, Path] = {}
    for path in sorted(mask_dir.rglob("*.png")):
        if path.stem in masks:
            raise ValueError(f"{path}: mask stem {path.stem!r} also used by {masks[path.stem]}")
        masks[path.stem] = path
    return masks


def index_dicom(root: str | Path) -> list[Sample]:
    """Pair images/**/*.dcm with masks/**/<stem>.png; patient from the PatientID tag."""
    root = Path(root)
    masks = _masks_by_stem(root / "masks")
    samples = []
    for path in sorted((root / "images").rglob("*.dcm")):
        if path.stem not in masks:
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        except Exception as exc:
            raise ValueError(f"{path}: not a readable DICOM file ({exc})") from exc
        patient = str(ds.get("PatientID", "")) or path.parent.name
        samples.append(Sample(path, masks[path.stem], patient, "dicom"))
    if not samples:
        raise FileNotFoundError(f"{root}: no images/**/*.dcm with a matching masks/**/<stem>.png")
    return samples


def index_folder(root: str | Path, patient_regex: str = r"^(.*)$") -> list[Sample]:
    """Pair images/NAME.{png,jpg,...} with masks/NAME.png; patient from the regex's first group."""
    root = Path(root)
    masks = _masks_by_stem(root / "masks")
    pattern = re.compile(patient_regex)
    samples = []
    for path in sorted((root / "images").iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.stem not in masks:
            continue
        match = pattern.search(path.stem)
        if match is None:
            raise ValueError(f"{path}: file name does not match patient_regex {patient_regex!r}")
        samples.append(Sample(path, masks[path.stem], match.group(1) if match.groups() else match.group(0), "image"))
    if not samples:
        raise FileNotFoundError(f"{root}: no images/NAME.(png|jpg) with a matching masks/NAME.png")
    return samples
