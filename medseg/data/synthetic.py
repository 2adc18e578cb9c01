"""Embedded demo dataset: CT-like DICOM series with organ and lesion label masks, made with pydicom."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

CLASS_NAMES = ("background", "organ", "lesion")
VERSION = 3  # bump when the generator changes so old caches are not reused
_SS = 2  # supersampling factor used for partial-volume edges


def _ellipse(yy, xx, cy, cx, ry, rx, angle=0.0) -> np.ndarray:
    """Boolean mask of a rotated ellipse on the grid."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = dx * c + dy * s, -dx * s + dy * c
    return (u / max(rx, 1e-6)) ** 2 + (v / max(ry, 1e-6)) ** 2 <= 1.0


def _downsample(a: np.ndarray) -> np.ndarray:
    """Average _SS x _SS blocks: the partial-volume effect of a finite pixel."""
    h, w = a.shape[0] // _SS, a.shape[1] // _SS
    return a.reshape(h, _SS, w, _SS).mean(axis=(1, 3))


def _patient_anatomy(rng: np.random.Generator, size: int, n_slices: int) -> dict:
    """Draw one patient's body, organ and lesion geometry (in output pixels and slice indices)."""
    half = size / 2
    organ_rz = rng.uniform(0.55, 0.75) * n_slices
    lesions = []
    for _ in range(int(rng.integers(1, 4))):
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.45)
        lesions.append(
            dict(
                oy=rad * np.sin(ang),
                ox=rad * np.cos(ang),
                z=rng.uniform(0.3, 0.7) * n_slices,
                r=rng.uniform(0.045, 0.075) * size,
                rz=rng.uniform(1.6, 2.8),
                hu=rng.choice([rng.uniform(-10, 20), rng.uniform(150, 190)], p=[0.75, 0.25]),
            )
        )
    return dict(
        body=(
            half + rng.uniform(-4, 4),
            half + rng.uniform(-4, 4),
            rng.uniform(0.30, 0.36) * size,
            rng.uniform(0.40, 0.45) * size,
        ),
        organ=(
            half + rng.uniform(-0.12, -0.02) * size,
            half - rng.uniform(0.10, 0.18) * size,
            rng.uniform(0.13, 0.17) * size,
            rng.uniform(0.15, 0.2) * size,
            rng.uniform(-0.5, 0.5),
        ),
        organ_z=(n_slices / 2 + rng.uniform(-0.8, 0.8), organ_rz),
        organ_hu=rng.uniform(55, 75),
        lesions=lesions,
    )


def render_slice(anat: dict, z: float, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render one axial slice: Hounsfield units (float) and labels (uint8)."""
    n = size * _SS
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / _SS
    by, bx, bry, brx = anat["body"]
    body = _ellipse(yy, xx, by, bx, bry, brx)
    inner = _ellipse(yy, xx, by, bx, bry - 0.03 * size, brx - 0.03 * size)
    hu = np.full((n, n), -1000.0, np.float32)
    hu[body] = -100.0  # subcutaneous fat
    hu[inner] = 20.0  # soft tissue
    spine = _ellipse(yy, xx, by + bry * 0.6, bx, 0.05 * size, 0.05 * size)
    hu[spine] = 700.0
    labels = np.zeros((n, n), np.uint8)
    oz, orz = anat["organ_z"]
    scale = 1.0 - ((z - oz) / orz) ** 2
    if scale > 0.05:
        cy, cx, ry, rx, ang = anat["organ"]
        organ = _ellipse(yy, xx, cy, cx, ry * np.sqrt(scale), rx * np.sqrt(scale), ang) & inner
        hu[organ] = anat["organ_hu"]
        labels[organ] = 1
        for les in anat["lesions"]:
            s = 1.0 - ((z - les["z"]) / les["rz"]) ** 2
            if s <= 0.1:
                continue
            ly, lx = cy + les["oy"] * ry, cx + les["ox"] * rx
            lesion = _ellipse(yy, xx, ly, lx, les["r"] * np.sqrt(s), les["r"] * np.sqrt(s)) & organ
            hu[lesion] = les["hu"]
            labels[lesion] = 2
    hu = (_downsample(hu) + rng.normal(0.0, 12.0, (size, size))).astype(np.float32)
    # A pixel takes the label covering most of it (ties go to the higher class).
    fractions = np.stack([_downsample((labels == k).astype(np.float32)) for k in range(3)])
    fractions += np.arange(3)[:, None, None] * 1e-3
    return hu.astype(np.float32), fractions.argmax(0).astype(np.uint8)


def _write_dicom(path: Path, hu: np.ndarray, patient: int, z_index: int, uids: dict) -> None:
    """Write one CT slice with realistic tags (signed 16-bit, RescaleIntercept -1024)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.Modality = "CT"
    ds.PatientName = f"Demo^Patient{patient:02d}"
    ds.PatientID = f"DEMO-{patient:04d}"
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
    ds.ReferringPhysicianName, ds.Manufacturer = "", "medseg demo"
    ds.SeriesDescription = "synthetic abdomen CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.SeriesNumber, ds.InstanceNumber = 1, z_index + 1
    thickness = 5.0
    ds.SliceThickness = thickness
    ds.ImagePositionPatient = [-192.0, -192.0, z_index * thickness]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1.5, 1.5]
    # the rest of the CT Image IOD's required attributes (PS3.3 A.3), so that dciodvfy finds no error
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.PatientPosition, ds.Laterality, ds.PositionReferenceIndicator = "HFS", "", ""
    ds.KVP, ds.AcquisitionNumber = "", 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    stored = np.clip(np.round(hu + 1024.0), -32768, 32767).astype(np.int16)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


def generate(root: str | Path, patients: int = 12, slices: int = 8, size: int = 256, seed: int = 0) -> Path:
    """Write the demo dataset to ROOT (images/caseNN/*.dcm, masks/*.png); deterministic by seed."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    pydicom.config.settings  # noqa: B018 - keep pydicom configured before writing
    for p in range(patients):
        anat = _patient_anatomy(rng, size, slices)
        uids = {k: generate_uid(entropy_srcs=[str(seed), str(p), k]) for k in ("study", "series", "frame")}
        case = f"case{p:02d}"
        (root / "images" / case).mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        for z in range(slices):
            hu, labels = render_slice(anat, z + 0.5, size, rng)
            stem = f"{case}_s{z:02d}"
            _write_dicom(root / "images" / case / f"{stem}.dcm", hu, p, z, uids)
            Image.fromarray(labels).save(root / "masks" / f"{stem}.png")
    return root


def ensure_demo_dataset(cache_dir: str | Path, seed: int = 0, **kwargs) -> Path:
    """Return the demo dataset folder under CACHE_DIR, generating it atomically when absent."""
    target = Path(os.path.expanduser(str(cache_dir))) / f"demo-v{VERSION}-seed{seed}"
    if (target / "COMPLETE").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
    try:
        generate(tmp, seed=seed, **kwargs)
        (tmp / "COMPLETE").write_text("ok\n")
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "COMPLETE").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
