"""Label sources for DICOM images: per-slice PNG, a NIfTI volume per series, or a DICOM SEG."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from medseg.data.dicom import SliceMeta
from medseg.data.geometry import pixel_voxels


def read_png(path: Path) -> np.ndarray:
    """Raw label values of a PNG (palette indices for palette images)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im if im.mode in ("L", "P", "I", "I;16") else im.convert("L"))
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: cannot read label image ({exc})") from None


@lru_cache(maxsize=8)
def _nifti(path: str):
    import nibabel as nib

    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine


def nifti_slice(path: Path, meta: SliceMeta, shape: tuple[int, int]) -> np.ndarray:
    """Labels of one DICOM frame sampled from a NIfTI volume by geometry (flips and permutations included).

    Each pixel's patient position (LPS, from ImagePositionPatient, ImageOrientationPatient and
    PixelSpacing) is mapped through the inverse NIfTI affine (RAS) to the nearest voxel; pixels
    outside the volume get 255 (ignored).
    """
    if meta.position is None or meta.orientation is None or meta.pixel_spacing is None:
        raise ValueError(f"{path}: the DICOM frame has no geometry to align a NIfTI volume with")
    volume, affine = _nifti(str(path))
    rows, cols = shape
    jj, ii = np.mgrid[0:rows, 0:cols]
    voxels = pixel_voxels(meta.position, meta.orientation, meta.pixel_spacing, jj.ravel(), ii.ravel(), affine)
    voxel = np.rint(voxels).astype(np.int64)
    inside = np.all((voxel >= 0) & (voxel < np.asarray(volume.shape[:3])[:, None]), axis=0)
    out = np.full(rows * cols, 255, dtype=np.int64)
    v = voxel[:, inside]
    out[inside] = volume[v[0], v[1], v[2]]
    return out.reshape(rows, cols)


def check_nifti_fits(path: Path, slices: Sequence) -> None:
    """Refuse a NIfTI label volume that does not cover its DICOM series voxel for pixel: the corner pixels
    of the first and last slice must land inside the volume, on voxel centres (within a quarter voxel)."""
    import nibabel as nib

    volume = nib.load(path)  # the header's grid: no voxel data read
    affine = volume.affine
    offsets = []
    for ref in (slices[0], slices[-1]):
        rows, cols = ref.shape
        corner_rows, corner_cols = np.array([0, 0, rows - 1, rows - 1]), np.array([0, cols - 1, 0, cols - 1])
        corners = pixel_voxels(ref.position, ref.orientation, ref.spacing, corner_rows, corner_cols, affine)
        if (np.rint(corners) < 0).any() or (np.rint(corners) >= np.asarray(volume.shape[:3])[:, None]).any():
            raise ValueError(
                f"{path}: does not match its series ({ref.path.parent}): slice {ref.path.name} lies outside the "
                f"label volume (shape {tuple(volume.shape[:3])}); check the label's affine and patient"
            )
        offsets.append(np.abs(corners - np.rint(corners)).max())
    if max(offsets) > 0.25:
        raise ValueError(
            f"{path}: does not match its series ({slices[0].path.parent}): pixel centres fall {max(offsets):.2f} "
            "voxels off the label's voxel centres (another spacing or affine)"
        )


@lru_cache(maxsize=8)
def _seg(path: str):
    import highdicom as hd

    return hd.seg.segread(path)


def seg_slice(path: Path, meta: SliceMeta) -> np.ndarray:
    """Label map (segment numbers) of one source instance from a DICOM SEG."""
    seg = _seg(str(path))
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[meta.sop_uid], combine_segments=True, skip_overlap_checks=True
    )
    return np.asarray(pixels[0], dtype=np.int64)


def seg_references(path: Path) -> set[str]:
    """SOPInstanceUIDs a DICOM SEG file refers to (empty for other objects)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # not DICOM, truncated
        raise ValueError(f"{path}: not a readable DICOM file among the masks ({type(exc).__name__})") from None
    if ds.get("Modality") != "SEG":
        return set()
    return {
        str(ref.ReferencedSOPInstanceUID)
        for series in ds.get("ReferencedSeriesSequence", [])
        for ref in series.get("ReferencedInstanceSequence", [])
    }


def masks_by_stem(mask_dir: Path) -> dict[str, Path]:
    """Map mask file stems to paths, refusing duplicate stems."""
    masks: dict[str, Path] = {}
    for path in sorted(mask_dir.rglob("*.png")):
        if path.stem in masks:
            raise ValueError(f"{path}: mask stem {path.stem!r} also used by {masks[path.stem]}")
        masks[path.stem] = path
    return masks


def _by_name(paths: list[Path], name) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """PATHS keyed by NAME(path): (the names only one path has, the names several share)."""
    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(name(path), []).append(path)
    return {k: v[0] for k, v in groups.items() if len(v) == 1}, {k: v for k, v in groups.items() if len(v) > 1}


def _nifti_stem(path: Path) -> str:
    return path.name.split(".nii")[0]


def label_lookups(mask_dir: Path) -> dict[str, dict]:
    """Index a masks folder: PNG and NIfTI labels by path below masks/ and by name (where the name is unique),
    DICOM SEG by referenced instance (an instance two SEGs reference is ambiguous)."""
    if not mask_dir.is_dir():
        return {"png": {}, "png_relative": {}, "nifti": {}, "nifti_relative": {}, "seg": {}, "ambiguous": {}}
    pngs, niftis = sorted(mask_dir.rglob("*.png")), sorted(mask_dir.rglob("*.nii*"))
    png, _ = _by_name(pngs, lambda p: p.stem)  # shared PNG stems pair by path only
    nifti, shared_nifti = _by_name(niftis, _nifti_stem)
    seg_files = sorted(mask_dir.rglob("*.dcm"))
    references = [(uid, p) for p in seg_files for uid in seg_references(p) if uid]
    seg: dict[str, Path] = {}
    shared_seg: dict[str, list[Path]] = {}
    for uid, path in references:
        if uid in seg and seg[uid] != path:
            shared_seg[uid] = [seg[uid], path]
        seg.setdefault(uid, path)
    return {
        "png": png,
        "png_relative": {p.relative_to(mask_dir).with_suffix("").as_posix(): p for p in pngs},
        "nifti": nifti,
        "nifti_relative": {p.relative_to(mask_dir).as_posix().split(".nii")[0]: p for p in niftis},
        "seg": seg,
        "ambiguous": {f"nifti:{k}": v for k, v in shared_nifti.items()}
        | {f"seg:{k}": v for k, v in shared_seg.items()},
    }


def label_key(image: Path, root: Path) -> str:
    """An image's path below ROOT/images (or ROOT) without its suffix: where its PNG label lies under masks/."""
    base = root / "images" if (root / "images") in image.parents else root
    return image.relative_to(base).with_suffix("").as_posix()


def find_label(
    lookups: dict[str, dict], image: Path, frame: int, frames: int, sop_uid: str, relative: str = ""
) -> Path | None:
    """The label file of one frame: masks/<relative path>.png, else <stem>.png anywhere (<stem>_fNNNN.png for the
    frames of a multi-frame file), then the NIfTI volume of its series folder (masks/<folder below images/>.nii.gz,
    else a uniquely named masks/**/<folder name>.nii.gz), then a SEG that references the instance. A label that
    two files could be is refused, naming both.

    RELATIVE is the image's path below images/ without its suffix.
    """
    suffix = "" if frames == 1 else f"_f{frame:04d}"
    folder = relative.rpartition("/")[0]
    png = lookups["png_relative"].get(f"{relative}{suffix}") or lookups["png"].get(f"{image.stem}{suffix}")
    nifti = lookups["nifti_relative"].get(folder) if folder else None
    if png is None and nifti is None:
        _refuse_ambiguous(lookups, f"nifti:{image.parent.name}", image)
        nifti = lookups["nifti"].get(image.parent.name)
    if png is None and nifti is None and sop_uid:
        _refuse_ambiguous(lookups, f"seg:{sop_uid}", image)
    return png or nifti or lookups["seg"].get(sop_uid)


def _refuse_ambiguous(lookups: dict[str, dict], key: str, image: Path) -> None:
    candidates = lookups["ambiguous"].get(key)
    if candidates:
        names = " and ".join(str(p) for p in candidates)
        raise ValueError(
            f"{image}: its label could be {names}; put it at masks/<the series folder's path below images/>.nii.gz "
            "or keep one SEG per instance"
        )
