"""Find image/mask pairs and their patients in the DICOM and plain-folder layouts."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import pydicom

from medseg.data.dicom import frame_geometry
from medseg.data.geometry import Series, SliceRef, assemble_series
from medseg.data.labels import check_nifti_fits, find_label, label_key, label_lookups, masks_by_stem
from medseg.utils.privacy import register_source

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class Sample:
    """One 2-D image with its mask and the patient it belongs to."""

    image: Path
    mask: Path
    patient: str
    kind: str  # "dicom" or "image"
    frame: int = 0
    series: str = ""  # the series (volume) it belongs to; "" for a 2-D image
    slice_index: int = 0  # its place in the series along the slice normal
    modality: str = ""  # DICOM Modality (CT, MR, CR...) or an nnU-Net channel name; "" for plain images
    unlabelled: tuple[int, ...] = ()  # classes its label map leaves out (medseg.data.partial_labels)
    # every frame (path, frame) of its series in order, where some have no label: the context stacks' neighbours
    frames: tuple[tuple[Path, int], ...] = field(default=(), compare=False, repr=False)
    label_free: bool = False  # a neighbour fed as context only: its labels are unknown (ignore_index)


def patient_key(ds: pydicom.Dataset, path: Path) -> tuple[str, bool]:
    """(grouping key of the object's patient, whether it is a fallback): PatientID, else the study UID.

    Without a PatientID, all series of one study stay together (a study belongs to one patient);
    the folder holding the file is the last resort.
    """
    patient = str(ds.get("PatientID", "")).strip()
    if patient:
        return patient, False
    study = str(ds.get("StudyInstanceUID", "")).strip()
    return (f"study:{study}" if study else f"folder:{path.parent}"), True


def index_dicom(root: str | Path, strict: bool = False) -> list[Sample]:
    """Pair DICOM frames under images/ with labels under masks/; patient from the PatientID tag.

    A frame's label is masks/**/<stem>.png (<stem>_fNNNN.png for frame NNNN of a multi-frame file), a
    NIfTI volume masks/<series folder>.nii[.gz], or a DICOM SEG under masks/ that references the
    instance. Objects without pixel data are skipped with one log line; unreadable files are logged
    and skipped (raised with STRICT).
    """
    root = Path(root)
    register_source(root)
    lookups = label_lookups(root / "masks")
    samples, refs, skipped, fallback = [], [], 0, 0
    for path in sorted((root / "images").rglob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            if strict:
                raise ValueError(f"{path}: not a readable DICOM file ({exc})") from exc
            log.error("%s: not a readable DICOM file (%s)", path, exc)
            skipped += 1
            continue
        if "Rows" not in ds:
            log.info("%s: skipped, no pixel data (%s)", path, ds.get("Modality", "unknown modality"))
            continue
        patient, guessed = patient_key(ds, path)
        fallback += guessed
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        relative = label_key(path, root)
        for frame in range(frames):
            refs.append(slice_ref(ds, path, frame))
            mask = find_label(lookups, path, frame, frames, str(ds.get("SOPInstanceUID", "")), relative)
            if mask is not None:
                samples.append(Sample(path, mask, patient, "dicom", frame, modality=str(ds.get("Modality", ""))))
    if skipped:
        log.warning("%s: %d unreadable DICOM files skipped", root, skipped)
    if fallback:
        log.warning("%d DICOM files have no PatientID: grouped by StudyInstanceUID for the patient split", fallback)
    if not samples:
        raise FileNotFoundError(f"{root}: no DICOM frames under images/ with a label under masks/")
    check_unique_pairing(samples)
    return in_series(samples, refs)


def slice_ref(ds: pydicom.Dataset, path: Path, frame: int) -> SliceRef:
    """The geometry of one frame, as series assembly takes it."""
    spacing, position, orientation = frame_geometry(ds, frame)
    instance = int(ds.get("InstanceNumber", 0) or 0)
    uid = str(ds.get("SeriesInstanceUID", ""))
    shape = (int(ds.get("Rows", 0)), int(ds.get("Columns", 0)))
    return SliceRef(path, frame, uid, position, orientation, spacing, instance, shape)  # type: ignore[arg-type]


def in_series(samples: list[Sample], refs: list[SliceRef]) -> list[Sample]:
    """SAMPLES with their series and place in it (assembled from every frame REFS holds, labelled or not),
    in their order (file path); 2-D images keep series ''."""
    place: dict[tuple[Path, int], tuple[str, int]] = {}
    labels = {(s.image, s.frame): s.mask for s in samples}

    def refused(series: Series, error: ValueError) -> None:
        if any((r.path, r.frame) in labels for r in series.slices):
            raise error
        log.warning("%s; skipped (none of its frames is labelled)", error)

    assembled = assemble_series(refs, refused)
    for series in assembled:
        volume = len(series.slices) > 1 and series.spacing is not None
        for i, ref in enumerate(series.slices):
            place[ref.path, ref.frame] = (series.key if volume else "", i if volume else 0)
        volumes = {labels[r.path, r.frame] for r in series.slices if (r.path, r.frame) in labels}
        for label in volumes if volume else ():
            if label.name.endswith((".nii", ".nii.gz")):
                check_nifti_fits(label, series.slices)
    frames: dict[str, tuple[tuple[Path, int], ...]] = {}
    for series in assembled:
        order = tuple((r.path, r.frame) for r in series.slices)
        if len(order) > 1 and any(key not in labels for key in order):
            frames[series.key] = order  # sparsely labelled: stacks reach the unlabelled frames too
    placed = [replace(s, series=place[s.image, s.frame][0], slice_index=place[s.image, s.frame][1]) for s in samples]
    return [replace(s, frames=frames.get(s.series, ())) for s in placed]


def check_unique_pairing(samples: list[Sample]) -> None:
    """Refuse one PNG label paired with several image files (same file name in different folders)."""
    owner: dict[tuple[Path, int], Path] = {}
    for sample in samples:
        if sample.mask.suffix.lower() != ".png":
            continue
        first = owner.setdefault((sample.mask, sample.frame), sample.image)
        if first != sample.image:
            raise ValueError(
                f"{sample.mask}: label of both {first} and {sample.image} by file name; put each label at "
                "masks/<the image's path below images/>.png"
            )


def index_folder(root: str | Path, patient_regex: str = r"^(.*)$") -> list[Sample]:
    """Pair images/NAME.{png,jpg,...} with masks/NAME.png; patient from the regex's first group."""
    root = Path(root)
    register_source(root)
    masks = masks_by_stem(root / "masks")
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


def source_fingerprint(samples: list[Sample]) -> str:
    """SHA-256 over every image and label file's path, size and modification time."""
    digest = hashlib.sha256()
    for path in sorted({p for s in samples for p in (s.image, s.mask)}):
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
