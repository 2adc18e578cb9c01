"""Where a split's slices sit in their volumes, and the voxel spacing of the network's grid, from headers only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom

from medseg.data.dicom import frame_geometry
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
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:])) if orientation else None
    at = float(np.dot(normal, position)) if normal is not None and position else float(sample.slice_index)
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
        a, b = samples[items[0]], samples[items[min(1, len(items) - 1)]]
        first, second = header_geometry(a), header_geometry(b)
        step = abs(second[0] - first[0]) / max(1, b.slice_index - a.slice_index)  # mm between neighbouring slices
        plane = network_spacing(first[1], first[2], size, policy, target)
        spacing = [step, *plane] if plane and step > 0 else None
        volumes.append({"name": name, "items": items, "spacing": spacing})
    return volumes
