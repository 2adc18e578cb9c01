"""NIfTI volumes in the nnU-Net raw layout: dataset.json, canonical orientation, slices, geometry, bad grids."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.data.decode import load_image_meta, load_mask
from medseg.data.nifti import nnunet_class_names
from medseg.data.sources import index_layout
from medseg.evaluation.volumes import slice_spacing

from .conftest import REPO

HN_CT = REPO.parent / "shared" / "data" / "hn_ct"
LABELS = {"background": 0, "liver": 1, "spleen": 2}


def write_dataset(root: Path, cases: int = 3, affine=None) -> Path:
    """A small nnU-Net raw dataset: 16 x 12 x 5 volumes, axes L P S (as hn_ct), a marker at the patient's
    right, anterior corner of slice 1 and label 1 there."""
    affine = np.diag([-0.8, -0.8, 2.5, 1.0]) if affine is None else affine
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(cases):
        image = np.zeros((16, 12, 5), np.int16)
        image[0, 0, 1] = 1000  # voxel index 0 on axes L and P: the most right, most anterior voxel
        label = (image > 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"CASE_{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"CASE_{i:03d}.nii.gz")
    meta = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": cases, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_slices_come_in_order_shown_as_a_viewer_shows_them_with_their_geometry(tmp_path):
    root = write_dataset(tmp_path / "d")
    samples = index_layout(root, "nnunet")
    assert len(samples) == 3 * 5 and {s.patient for s in samples} == {"CASE_000", "CASE_001", "CASE_002"}
    case = [s for s in samples if s.series == "CASE_000"]
    assert [s.slice_index for s in case] == [0, 1, 2, 3, 4]
    image, meta = load_image_meta(case[1], 1, window=[500, 1000])
    assert image.shape == (12, 16, 1)  # rows anterior -> posterior, columns right -> left
    assert image[0, 0, 0] == 1.0 and image.sum() == 1.0  # the right, anterior voxel is the top-left pixel
    assert load_mask(case[1], 3, meta=meta)[0, 0] == 1
    assert meta.pixel_spacing == pytest.approx((0.8, 0.8))
    metas = [load_image_meta(s, 1)[1] for s in case]
    assert slice_spacing(metas) == pytest.approx(2.5)
    assert nnunet_class_names(root) == ["background", "liver", "spleen"]


@pytest.mark.parametrize("change", ["shape", "affine"])
def test_a_label_on_another_grid_is_refused_naming_it(tmp_path, change):
    root = write_dataset(tmp_path / "d")
    label = root / "labelsTr" / "CASE_001.nii.gz"
    data = np.zeros((16, 12, 4) if change == "shape" else (16, 12, 5), np.uint8)
    nib.save(nib.Nifti1Image(data, np.diag([-0.8, -0.8, 3.0 if change == "affine" else 2.5, 1.0])), label)
    with pytest.raises(ValueError, match=rf"^{label}: (shape|its affine)"):
        index_layout(root, "nnunet")


def test_a_dataset_json_with_region_labels_is_refused_in_one_line(tmp_path):
    root = write_dataset(tmp_path / "d")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole": [1, 2]}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="labels must map class names to the values 0..K-1"):
        nnunet_class_names(root)


def test_data_nnunet_takes_its_class_names_from_dataset_json(make_cfg, tmp_path):
    root = write_dataset(tmp_path / "d")
    cfg = make_cfg(["data=nnunet", f"data.root={root}"])
    assert list(cfg.data.class_names) == ["background", "liver", "spleen"]


@pytest.mark.skipif(not (HN_CT / "imagesTr").is_dir(), reason=f"{HN_CT} not present")
def test_hn_ct_indexes_with_its_class_names_and_upright_anatomy():
    organs = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible"]
    assert nnunet_class_names(HN_CT) == ["background", *organs]
    samples = index_layout(HN_CT, "nnunet")
    assert len(samples) == 203 * 128 and len({s.series for s in samples}) == 203
    case = [s for s in samples if s.series == "HNCT_001"]
    masks = [load_mask(s, 8, meta=load_image_meta(s, 1)[1]) for s in case]
    brainstem = [k for k, m in enumerate(masks) if (m == 1).any()]
    cord = [k for k, m in enumerate(masks) if (m == 2).any()]
    assert np.mean(brainstem) > np.mean(cord)  # slices run inferior -> superior
    right = np.argwhere(np.stack(masks) == 3)[:, 2].mean()
    left = np.argwhere(np.stack(masks) == 4)[:, 2].mean()
    assert right < left  # the patient's right parotid on the image's left, as viewers show it


@pytest.mark.slow
@pytest.mark.skipif(not (HN_CT / "imagesTr").is_dir(), reason=f"{HN_CT} not present")
def test_experiment_hn_ct_trains_streamed_from_a_prepared_subset(cache_dir, tmp_path):
    import subprocess
    import sys

    from .helpers import run_train

    out = tmp_path / "hn_ct"
    settings = ["layout=nnunet", "image_size=64", "context_slices=1", "normalize=ct", "include_regex=^HNCT_00[1-8]_"]
    settings.append("missing_labels=missing_labels.json")
    command = [sys.executable, "-m", "medseg.data.prepare", str(HN_CT), str(out), *settings, "--workers", "2"]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    meta = json.loads((out / "medseg.json").read_text())
    assert meta["settings"]["context_slices"] == 1 and meta["settings"]["class_names"][7] == "Mandible"
    assert meta["settings"]["missing_labels"] == "missing_labels.json"
    assert sum(split["items"] for split in meta["splits"].values()) == 8 * 128
    ct = meta["intensity"]["ct"]  # HU of the training organs: the larynx's air to the mandible's bone
    assert meta["intensity"]["normalize"] == "ct" and -1100 < ct["low"] < -500 and 500 < ct["high"] < 3000
    assert -100 < ct["mean"] < 300  # mostly soft tissue
    args = ["experiment=hn_ct", f"data.root={out}", "trainer.fast_dev_run=true"]
    run_train([*args, "model.log_images=false", f"hydra.run.dir={tmp_path / 'run'}"], cache_dir)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["StreamDataModule"]["intensity"]["ct"] == ct


def test_label_slices_written_back_give_the_source_volume_in_its_own_orientation(tmp_path):
    from medseg.data.nifti import label_volume, read_label_slice

    root = write_dataset(tmp_path / "d", cases=1)
    label_path = root / "labelsTr" / "CASE_000.nii.gz"
    original = nib.load(label_path)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3, size=original.shape, dtype=np.uint8)  # every voxel distinct in place
    nib.save(nib.Nifti1Image(data, original.affine), label_path)
    from medseg.data.nifti import canonical

    canonical.cache_clear()
    masks = [read_label_slice(label_path, k) for k in range(5)]
    written = label_volume(root / "imagesTr" / "CASE_000_0000.nii.gz", masks)
    assert np.allclose(written.affine, original.affine) and np.array_equal(np.asarray(written.dataobj), data)


def test_medseg_predict_writes_a_label_volume_on_the_source_grid(demo_checkpoint, tmp_path):
    from medseg.deploy.predict import predict

    root = write_dataset(tmp_path / "d", cases=1)
    source = root / "imagesTr" / "CASE_000_0000.nii.gz"
    (written,) = predict(demo_checkpoint, source, tmp_path / "out")
    labels, image = nib.load(written), nib.load(source)
    assert labels.shape == image.shape and np.allclose(labels.affine, image.affine)
    assert written.name.endswith("_seg.nii.gz") and "CASE_000" not in written.name  # a keyed pseudonym


def test_medseg_eval_scores_an_nnunet_dataset_per_volume(demo_checkpoint, tmp_path):
    import csv

    from medseg.evaluation.evaluate import evaluate

    root = write_dataset(tmp_path / "d")
    evaluate(demo_checkpoint, root, tmp_path / "eval", worst=1, mask_mapping={2: 0})
    with open(tmp_path / "eval" / "cases.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len({r["case"] for r in rows}) == 3 and {int(r["slices"]) for r in rows} == {5}
    assert {r["unit"] for r in rows} == {"mm"}
