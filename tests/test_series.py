"""DICOM slices as series: grouping, order along the normal, the rules, and NIfTI label volumes that must fit."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medseg.data.decode import load_image_meta, load_mask
from medseg.data.geometry import SliceRef, assemble_series
from medseg.data.index import index_dicom

from .conftest import REPO

CHAOS = REPO.parent / "shared" / "data" / "chaos_mr"
needs_chaos = pytest.mark.skipif(not (CHAOS / "images").is_dir(), reason=f"{CHAOS} not present")
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def refs(z: list[float], orientation=AXIAL, x_shift: float = 0.0, uid: str = "1.2.3") -> list[SliceRef]:
    """Slices of one series at heights Z (given out of order on purpose), each shifted by X_SHIFT per slice."""
    return [
        SliceRef(Path(f"/s/IMG-{i:04d}.dcm"), 0, uid, (i * x_shift, 0.0, h), orientation, (0.8, 0.8), i + 1, (4, 4))
        for i, h in enumerate(z)
    ]


def test_a_series_is_sorted_along_its_normal_with_its_spacing():
    (series,) = assemble_series(refs([5.0, 0.0, 2.5, 7.5]))
    assert [s.position[2] for s in series.slices] == [0.0, 2.5, 5.0, 7.5]
    assert series.spacing == (2.5, 0.8, 0.8) and not series.warnings


@pytest.mark.parametrize(
    ("heights", "message"),
    [
        ([0.0, 2.5, 2.5, 5.0], "two slices at the same position (IMG-0001.dcm and IMG-0002.dcm)"),
        ([0.0, 2.5, 5.0, 10.0, 12.5], "a slice is missing after IMG-0002.dcm (a 5.00 mm step; the median is 2.50 mm)"),
    ],
)
def test_duplicate_and_missing_slices_are_refused_naming_the_series(heights, message):
    with pytest.raises(ValueError) as error:
        assemble_series(refs(heights))
    assert str(error.value) == f"series 1.2.3 (/s): {message}"


def test_uneven_spacing_and_gantry_tilt_warn_and_an_oblique_series_is_normal(caplog):
    (uneven,) = assemble_series(refs([0.0, 2.5, 5.0, 7.2, 9.7]))
    assert uneven.warnings == ["series 1.2.3 (/s): non-uniform slice spacing (2.20 to 2.50 mm)"]
    (tilted,) = assemble_series(refs([0.0, 2.5, 5.0], x_shift=0.5))
    assert tilted.warnings == ["series 1.2.3 (/s): slice positions 11.3 degrees off the slice normal (gantry tilt)"]
    c, s = np.cos(np.radians(1.0)), np.sin(np.radians(1.0))  # 1 degree oblique, consistent: accepted silently
    oblique = (1.0, 0.0, 0.0, 0.0, c, s)
    (series,) = assemble_series(
        [
            SliceRef(Path(f"/s/{i}.dcm"), 0, "9", (0.0, -s * h, c * h), oblique, (1.0, 1.0))
            for i, h in enumerate([0, 3, 6])
        ]
    )
    assert not series.warnings and series.spacing[0] == pytest.approx(3.0)


def test_mixed_orientation_splits_the_series_with_one_warning(caplog):
    coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    mixed = refs([0.0, 2.5, 5.0]) + [
        SliceRef(Path(f"/s/COR-{i}.dcm"), 0, "1.2.3", (0.0, y, 0.0), coronal, (0.8, 0.8)) for i, y in enumerate([0, 3])
    ]
    with caplog.at_level(logging.WARNING):
        parts = assemble_series(mixed)
    assert sorted(len(p.slices) for p in parts) == [2, 3] and {p.key for p in parts} == {"1.2.3#0", "1.2.3#1"}
    assert "series 1.2.3 (/s/IMG-0000.dcm): 2 orientations; split into one series each" in caplog.text


@needs_chaos
def test_chaos_mr_indexes_into_15_volumes_whose_slices_meet_their_label_slices():
    samples = index_dicom(CHAOS)
    volumes: dict[str, list] = {}
    for sample in samples:
        volumes.setdefault(sample.series, []).append(sample)
    assert len(volumes) == 15 and "" not in volumes
    for items in volumes.values():
        items.sort(key=lambda s: s.slice_index)
        label = np.asarray(nib.load(items[0].mask).dataobj)
        assert len(items) == label.shape[2]  # one sample per label slice
        instances = [int(pydicom.dcmread(s.image, stop_before_pixels=True).InstanceNumber) for s in items]
        assert instances == list(range(1, len(items) + 1))  # along the normal: inferior to superior
    patient = next(items for items in volumes.values() if items[0].patient == "CHAOS_MR_01")
    label = np.asarray(nib.load(patient[0].mask).dataobj)
    masks = []
    for sample in patient:
        image, meta = load_image_meta(sample, 1)
        masks.append(load_mask(sample, 5, meta=meta, shape=image.shape[:2]))
    liver = [k for k, mask in enumerate(masks) if (mask == 1).any()]
    expected = [k for k in range(label.shape[2]) if (label[:, :, k] == 1).any()]
    assert (liver[0], liver[-1]) == (expected[0], expected[-1])
    for k in (expected[0], len(masks) // 2, expected[-1]):  # the README's reading: label[:, ::-1, k].T
        assert np.array_equal(masks[k], label[:, ::-1, k].T)


def copy_patient(tmp_path: Path, patient: str = "CHAOS_MR_02") -> Path:
    """One chaos_mr patient (series and label volume) under TMP_PATH/data."""
    root = tmp_path / "data"
    shutil.copytree(CHAOS / "images" / patient, root / "images" / patient)
    (root / "masks").mkdir()
    shutil.copy(CHAOS / "masks" / f"{patient}.nii.gz", root / "masks")
    return root


@needs_chaos
def test_a_bad_series_ends_in_one_line_and_the_source_is_untouched(tmp_path):
    root = copy_patient(tmp_path)
    series = root / "images" / "CHAOS_MR_02"
    (series / "IMG-0010.dcm").unlink()
    with pytest.raises(ValueError, match=r"^series [\d.]+ \(.*CHAOS_MR_02\): a slice is missing after IMG-0009.dcm"):
        index_dicom(root)
    shutil.copy(CHAOS / "images" / "CHAOS_MR_02" / "IMG-0010.dcm", series)
    copy = pydicom.dcmread(series / "IMG-0011.dcm")
    copy.SOPInstanceUID = pydicom.uid.generate_uid()
    copy.save_as(series / "IMG-0011b.dcm")
    with pytest.raises(ValueError, match=r"two slices at the same position \(IMG-0011.dcm and IMG-0011b.dcm\)"):
        index_dicom(root)


@needs_chaos
@pytest.mark.parametrize("change", ["shape", "affine"])
def test_a_label_volume_that_does_not_fit_its_series_is_refused_naming_it(tmp_path, change):
    root = copy_patient(tmp_path)
    path = root / "masks" / "CHAOS_MR_02.nii.gz"
    label = nib.load(path)
    data, affine = np.asarray(label.dataobj), label.affine.copy()
    if change == "shape":
        data = data[:, :, :-3]  # a label of fewer slices
    else:
        affine[:3, :3] *= 1.1  # another spacing
    nib.save(nib.Nifti1Image(data, affine), path)
    with pytest.raises(ValueError, match=rf"^{path}: does not match its series"):
        index_dicom(root)


@needs_chaos
@pytest.mark.slow
def test_experiment_chaos_mr_trains_in_memory_with_context(cache_dir, tmp_path):
    from .helpers import run_train

    args = ["experiment=chaos_mr", f"data.root={CHAOS}", "data.fold=2", "trainer.fast_dev_run=true"]
    run_train([*args, "model.log_images=false", f"hydra.run.dir={tmp_path}"], cache_dir)
    split = json.loads((tmp_path / "split.json").read_text())
    assert sum(len({item["patient"] for item in items}) for items in split["splits"].values()) == 15
    assert len({item["patient"] for item in split["splits"]["val"]}) == 3 and split["folds"]["fold"] == 2


@needs_chaos
@pytest.mark.slow
def test_train_py_ends_in_one_line_on_a_series_with_a_missing_slice(cache_dir, tmp_path):
    from .helpers import run_train

    root = copy_patient(tmp_path)
    for patient in ("CHAOS_MR_03", "CHAOS_MR_05"):  # three patients for a split
        shutil.copytree(CHAOS / "images" / patient, root / "images" / patient)
        shutil.copy(CHAOS / "masks" / f"{patient}.nii.gz", root / "masks")
    (root / "images" / "CHAOS_MR_02" / "IMG-0010.dcm").unlink()
    before = sorted(p.name for p in root.rglob("*"))
    result = run_train([f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}"], cache_dir, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "CHAOS_MR_02): a slice is missing after IMG-0009.dcm" in lines[0]
    assert sorted(p.name for p in root.rglob("*")) == before  # the source untouched
