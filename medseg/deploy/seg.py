"""DICOM SEG and NIfTI label volumes of a segmented series: highdicom SEG with the model identified (as IHE AI
Results does), NIfTI with the series' scanner affine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from medseg import __version__
from medseg.data.geometry import frame_affine, step_vector
from medseg.utils.io import atomic_path
from medseg.utils.privacy import pseudonym


@dataclass(frozen=True)
class ModelIdentity:
    """The model a SEG names as its algorithm and contributing equipment; SHA256 of the model file."""

    name: str = "medseg PSPNet"
    version: str = __version__
    sha256: str = ""

    def seg_uids(self, source_series_uid: str, version: int = 0) -> tuple[str, str]:
        """(SeriesInstanceUID, SOPInstanceUID) of the SEG of a source series (at VERSION: more instances arrived
        after an earlier SEG) by this model: derived from all three, so a SEG sent again is the same instance and
        a later version's is a new series; fresh ones without a hash."""
        if not self.sha256:
            return generate_uid(), generate_uid()
        sources = [source_series_uid, self.sha256, *([f"version {version}"] if version else [])]
        return generate_uid(entropy_srcs=[*sources, "series"]), generate_uid(entropy_srcs=[*sources, "instance"])


def write_seg(
    sources: Sequence[Path],
    masks: Sequence[np.ndarray],
    class_names: Sequence[str],
    out: Path,
    model: ModelIdentity = ModelIdentity(),
    version: int = 0,
) -> Path:
    """A DICOM SEG (highdicom, binary segments, one per foreground class) over one series (at VERSION of it, as
    the node counts them), naming MODEL."""
    import highdicom as hd

    datasets = [pydicom.dcmread(p) for p in sources]
    parameters = {"sha256": model.sha256} if model.sha256 else None
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=hd.sr.CodedConcept("129465004", "SCT", "Artificial intelligence"),
        version=model.version,
        parameters=parameters,
    )
    tissue = hd.sr.CodedConcept("85756007", "SCT", "Tissue")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=name,
            segmented_property_category=tissue,
            segmented_property_type=tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for i, name in enumerate(class_names[1:], start=1)
    ]
    series_uid, sop_uid = model.seg_uids(str(datasets[0].SeriesInstanceUID), version)
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=np.stack(masks).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=900,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name="PSPNet",
        software_versions=__version__,
        device_serial_number="0",
        omit_empty_frames=False,
        contributing_equipment=[contributing_equipment(model)],
    )
    path = out / f"seg_{pseudonym(str(datasets[0].SeriesInstanceUID))}.dcm"
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


def series_affine(datasets: Sequence[pydicom.Dataset]) -> np.ndarray:
    """4x4 voxel (column, row, slice) -> RAS millimetre affine of a sorted series, as NIfTI expects."""
    first = datasets[0]
    positions = [ds.ImagePositionPatient for ds in datasets]
    step = step_vector(positions, first.ImageOrientationPatient, float(first.get("SliceThickness", 1.0)))
    return frame_affine(positions[0], first.ImageOrientationPatient, first.PixelSpacing, step)


def write_nifti(sources: Sequence[Path], masks: Sequence[np.ndarray], out: Path) -> Path:
    """The series' label volume as NIfTI (uint8, x = column, y = row, z = slice) with its scanner affine."""
    import nibabel as nib

    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sources]
    volume = np.stack(masks).transpose(2, 1, 0).astype(np.uint8)
    path = out / f"seg_{pseudonym(str(datasets[0].SeriesInstanceUID))}.nii.gz"
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(volume, series_affine(datasets)), tmp)
    return path


def contributing_equipment(model: ModelIdentity):
    """The ContributingEquipmentSequence item of the processing model (DCM Processing Equipment)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    versions = [model.version[:64], *([f"sha256:{model.sha256[:57]}"] if model.sha256 else [])]
    return hd.ContributingEquipment(
        manufacturer="medseg",
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name[:64],
        software_versions=versions,
        contribution_description=f"automatic segmentation by {model.name}"[:64],
    )
