"""The volumes of a split for per-volume scores: their slices in order and the voxel spacing of the network's grid,
from headers only (positions and steps by medseg.data.geometry)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom

from medseg.data.dicom import frame_geometry
from medseg.data.geometry import slice_position, slice_step
from medseg.data.index import Sample
from medseg.data.spacing import resampled_shape


def header_geometry(sample: Sample) -> tuple[float, tuple[float, float] | None, tuple[int, int]]:
    """(position along the slice normal in mm, in-plane spacing (row, column) in mm, (rows, columns)) of a
    sample, read from its header."""
    if sample.kind == "nifti":
        import nibabel as nib

        image = nib.load(sample.image)
        order = nib.orientations.io_orientation(image.affine)[:, 0].astype(int)  # file axis -> RAS axis
        zooms, shape = np.zeros(3), np.zeros(3, int)
        zooms[order], shape[order] = image.header.get_zooms()[:3], image.shape[:3]
        return sample.frame * float(zooms[2]), (float(zooms[1]), float(zooms[0])), (int(shape[1]), int(shape[0]))
    ds = pydicom.dcmread(sample.image, stop_before_pixels=True)
    spacing, position, orientation = frame_geometry(ds, sample.frame)
    at = slice_position(position, orientation) if orientation and position else float(sample.slice_index)
    return at, spacing, (int(ds.Rows), int(ds.Columns))  # type: ignore[return-value]


def network_spacing(plane, shape, size: Sequence[int], policy: str, target=None) -> tuple[float, float] | None:
    """(row, column) mm of a network input pixel for a slice of SHAPE at PLANE mm, resampled to TARGET mm
    (data.spacing) and fitted to SIZE by POLICY (stretch, letterbox, crop)."""
    if not plane:
        return None
    if target:
        plane, shape = tuple(target), resampled_shape(shape, plane, target)
    if policy == "crop":
        return float(plane[0]), float(plane[1])
    if policy == "letterbox":
        scale = min(size[0] / shape[0], size[1] / shape[1])
        return plane[0] / scale, plane[1] / scale
    return plane[0] * shape[0] / size[0], plane[1] * shape[1] / size[1]


def split_volumes(samples: Sequence[Sample], size: Sequence[int], policy: str, target=None) -> list[dict]:
    """The volumes among SAMPLES: name (series key), items (indices into SAMPLES in slice order) and spacing
    ([slice, row, column] mm of the network's grid, None without geometry). 2-D images are left out."""
    members: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        if sample.series:
            members.setdefault(sample.series, []).append(i)
    volumes = []
    for name, items in members.items():
        items.sort(key=lambda i: samples[i].slice_index)
        headers = [header_geometry(samples[i]) for i in items]
        step = slice_step([h[0] for h in headers]) if len(items) > 1 else 0.0  # mm between neighbouring slices
        plane = network_spacing(headers[0][1], headers[0][2], size, policy, target)
        spacing = [step, *plane] if plane and step > 0 else None
        volumes.append({"name": name, "items": items, "spacing": spacing})
    return volumes
