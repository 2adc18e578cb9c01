"""Patient-space geometry, in one place: DICOM frames assembled into series (grouped, sorted along the slice
normal, checked by rule), the slice step, and voxel <-> patient mappings (DICOM LPS, NIfTI RAS).

Rules, per series (a series is the slices of one SeriesInstanceUID with one orientation):
- duplicate positions (two instances at the same place): refused;
- a missing slice (a gap above 1.5x the median spacing): refused;
- non-uniform spacing (steps differing by more than 10% of the median, below a gap): a warning;
- mixed orientation within one SeriesInstanceUID: split into one series per orientation, with a warning;
- slice positions off the slice normal (gantry tilt): a warning; oblique but consistent series are normal;
- one slice, or no geometry (radiographs): a 2-D image, no series checks.
A refusal is one ValueError naming the series and a file of it. The same rules serve training (where a series
none of whose frames is labelled is skipped with a warning instead) and inference (medseg-predict, the node).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

GAP = 1.5  # a step above GAP x the median spacing is a missing slice
UNEVEN = 0.10  # steps differing from the median by more than this fraction are non-uniform
TILT_DEGREES = 0.5  # slice-to-slice offsets at more than this angle to the normal: gantry tilt
ORIENTATION_TOLERANCE = 1e-3  # direction cosines closer than this are the same orientation


@dataclass(frozen=True)
class SliceRef:
    """One frame of a DICOM file with its geometry (None where the header has none)."""

    path: Path
    frame: int
    series_uid: str
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    spacing: tuple[float, float] | None
    instance: int = 0
    shape: tuple[int, int] = (0, 0)  # rows, columns


@dataclass
class Series:
    """Slices of one series in order along the normal, with their spacing in mm (None for 2-D images)."""

    key: str
    slices: list[SliceRef]
    slice_spacing: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def spacing(self) -> tuple[float, float, float] | None:
        """(slice, row, column) spacing in mm, None without geometry."""
        first = self.slices[0].spacing
        if self.slice_spacing is None or first is None:
            return None
        return (self.slice_spacing, float(first[0]), float(first[1]))


def assemble_series(
    refs: Iterable[SliceRef], refused: Callable[[Series, ValueError], None] | None = None
) -> list[Series]:
    """Group slices by SeriesInstanceUID and orientation, sort each along its normal and check it by rule; a
    series the rules refuse raises, or goes to REFUSED(series, error) and is left out where that is given."""
    by_uid: dict[str, list[SliceRef]] = defaultdict(list)
    for ref in refs:
        by_uid[ref.series_uid or f"file:{ref.path}"].append(ref)
    out = []
    for uid, items in by_uid.items():
        groups = _by_orientation(items)
        if len(groups) > 1:
            log.warning("series %s (%s): %d orientations; split into one series each", uid, items[0].path, len(groups))
        for k, group in enumerate(groups):
            series = Series(uid if len(groups) == 1 else f"{uid}#{k}", group)
            try:
                out.append(_checked(series))
            except ValueError as error:
                if refused is None:
                    raise
                refused(series, error)
    return out


def _by_orientation(items: list[SliceRef]) -> list[list[SliceRef]]:
    groups: list[list[SliceRef]] = []
    for ref in items:
        for group in groups:
            if _same(group[0].orientation, ref.orientation):
                group.append(ref)
                break
        else:
            groups.append([ref])
    return groups


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.allclose(a, b, atol=ORIENTATION_TOLERANCE))


def _checked(series: Series) -> Series:
    """Sort SERIES along its normal and apply the rules; raises ValueError on a refusal."""
    slices = series.slices
    if len(slices) == 1 or any(s.position is None or s.orientation is None for s in slices):
        series.slices = sorted(slices, key=lambda s: (s.instance, str(s.path), s.frame))
        return series
    normal = slice_normal(slices[0].orientation)
    positions = np.array([s.position for s in slices], dtype=float)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    series.slices, along, positions = [slices[i] for i in order], along[order], positions[order]
    steps = np.diff(along)
    name = f"series {series.key} ({series.slices[0].path.parent})"
    duplicate = np.flatnonzero(steps < 1e-3)
    if duplicate.size:
        i = int(duplicate[0])
        first, second = series.slices[i].path, series.slices[i + 1].path
        raise ValueError(f"{name}: two slices at the same position ({first.name} and {second.name})")
    median = slice_step(along)
    if steps.max() > GAP * median:
        i = int(steps.argmax())
        raise ValueError(
            f"{name}: a slice is missing after {series.slices[i].path.name} "
            f"(a {steps[i]:.2f} mm step; the median is {median:.2f} mm)"
        )
    if np.abs(steps - median).max() > UNEVEN * median:
        series.warnings.append(f"{name}: non-uniform slice spacing ({steps.min():.2f} to {steps.max():.2f} mm)")
    offsets = np.diff(positions, axis=0)
    cosines = np.clip(np.abs(offsets @ normal) / np.linalg.norm(offsets, axis=1), 0.0, 1.0)
    tilt = float(np.degrees(np.arccos(cosines.min())))
    if tilt > TILT_DEGREES:
        series.warnings.append(f"{name}: slice positions {tilt:.1f} degrees off the slice normal (gantry tilt)")
    for warning in series.warnings:
        log.warning("%s", warning)
    series.slice_spacing = median
    return series


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM patient axes (L, P, S) <-> NIfTI's (R, A, S): its own inverse


def slice_normal(orientation) -> np.ndarray:
    """The unit normal of a slice from its ImageOrientationPatient (row direction x column direction)."""
    iop = np.asarray(orientation, dtype=float)
    return np.cross(iop[:3], iop[3:])


def slice_position(position, orientation) -> float:
    """A slice's position along its normal, in mm."""
    return float(np.dot(slice_normal(orientation), np.asarray(position, dtype=float)))


def slice_step(along: Sequence[float]) -> float:
    """The slice spacing of a series: the median step between its sorted positions along the normal, in mm."""
    return float(np.median(np.abs(np.diff(np.sort(np.asarray(along, dtype=float))))))


def step_vector(positions: Sequence, orientation, thickness: float = 1.0) -> np.ndarray:
    """The LPS mm vector from one slice of a sorted series to the next (first to last over the count); one slice:
    the normal times THICKNESS."""
    if len(positions) < 2:
        return slice_normal(orientation) * thickness
    first, last = (np.asarray(p, dtype=float) for p in (positions[0], positions[-1]))
    return (last - first) / (len(positions) - 1)


def frame_affine(position, orientation, spacing, step) -> np.ndarray:
    """4x4 voxel (column, row, slice) -> RAS mm affine of a series from its first frame's ImagePositionPatient,
    ImageOrientationPatient, PixelSpacing (row, column) and the STEP vector (LPS mm) from one slice to the next."""
    iop = np.asarray(orientation, dtype=float)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1] = iop[:3] * float(spacing[1]), iop[3:] * float(spacing[0])
    affine[:3, 2], affine[:3, 3] = np.asarray(step, dtype=float), np.asarray(position, dtype=float)
    return LPS_TO_RAS @ affine


def pixel_voxels(position, orientation, spacing, rows: np.ndarray, cols: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel coordinates [3, N] (float) in a NIfTI volume of AFFINE (RAS) of the DICOM pixels (ROWS[i], COLS[i]) of
    a frame."""
    iop = np.asarray(orientation, dtype=float)
    lps = (
        np.asarray(position, dtype=float)[:, None]
        + np.outer(iop[:3], np.asarray(cols) * spacing[1])
        + np.outer(iop[3:], np.asarray(rows) * spacing[0])
    )
    ras = LPS_TO_RAS @ np.vstack([lps, np.ones(lps.shape[1])])
    return (np.linalg.inv(affine) @ ras)[:3]


def displayed_slice_geometry(affine: np.ndarray, shape: Sequence[int], k: int):
    """(position, orientation, (row, column) spacing) in LPS of axial slice K of a canonical (RAS) volume of
    SHAPE as a viewer shows it (rows anterior to posterior, columns right to left: both voxel axes reversed)."""
    first = LPS_TO_RAS @ affine @ np.array([shape[0] - 1, shape[1] - 1, k, 1.0])
    lps_axes = LPS_TO_RAS[:3, :3] @ affine[:3, :3]
    column_step, row_step = -lps_axes[:, 0], -lps_axes[:, 1]
    spacing = (float(np.linalg.norm(row_step)), float(np.linalg.norm(column_step)))
    orientation = (*(column_step / spacing[1]), *(row_step / spacing[0]))
    return tuple(float(v) for v in first[:3]), tuple(float(v) for v in orientation), spacing
