"""One series path: the same sizing, statistics, folds and cache rules at training and inference."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medseg.data import cache as cache_module
from medseg.data.context import series_stacks, stack_indices
from medseg.data.datamodule import SegmentationDataModule
from medseg.data.decode import load_image_meta, load_raw
from medseg.data.index import index_dicom
from medseg.data.loaders import count_pixels
from medseg.data.sizing import fit_image, fit_to_size, placement, restore
from medseg.deploy.predict import group_series
from medseg.deploy.predictor import Predictor
from medseg.deploy.seg import write_nifti, write_seg

from .test_nifti import LABELS


def test_a_letterbox_model_is_fed_at_inference_the_input_it_trained_on(node_model):
    predictor = Predictor(node_model)
    predictor.info = replace(predictor.info, size_policy="letterbox")
    seen: list[np.ndarray] = []
    run = predictor._run
    predictor._run = lambda batch: (seen.append(batch.copy()), run(batch))[1]
    image = np.zeros((100, 200, 1), np.float32)
    image[40:60, 90:110] = 1.0  # a square
    mask = predictor.segment(image)
    trained, _ = fit_to_size(image, np.zeros((100, 200), np.uint8), predictor.info.image_size, "letterbox")
    np.testing.assert_array_equal(seen[0][0].transpose(1, 2, 0), trained)
    assert mask.shape == (100, 200)


@pytest.mark.parametrize("policy", ["stretch", "letterbox", "crop"])
@pytest.mark.parametrize("shape", [(100, 200), (37, 23), (64, 64)])
def test_outputs_map_back_onto_the_slice_exactly(policy, shape):
    labels = np.zeros(shape, np.uint8)
    labels[shape[0] // 4 : shape[0] // 2, shape[1] // 3 : shape[1] // 2] = 1
    size = (64, 64) if policy != "crop" else (48, 80)
    fitted = fit_image(labels, size, policy, nearest=True)
    back = restore(np.stack([fitted == 0, fitted == 1]).astype(np.float32), placement(shape, size, policy))
    assert back.shape[1:] == shape
    assert float((back.argmax(0) == labels).mean()) > 0.97
    if policy == "crop":  # the pixel scale is kept: everything inside the window comes back unchanged
        top, left, rows, cols = placement(shape, size, policy).box
        y, x = slice(max(0, -top), max(0, -top) + min(rows, size[0])), slice(max(0, -left), max(0, -left) + cols)
        np.testing.assert_array_equal(back.argmax(0)[y, x][: size[0], : size[1]], labels[y, x][: size[0], : size[1]])


def test_prepare_writes_the_fold_asked_for(demo_root, tmp_path):
    from medseg.data.prepare import prepare

    out = tmp_path / "prepared"
    first = prepare(demo_root, out, image_size=32, num_folds=3, fold=0)
    second = prepare(demo_root, out, image_size=32, num_folds=3, fold=1)
    assert second["settings"]["fold"] == 1
    names = [{v["name"] for v in meta["splits"]["val"]["volumes"]} for meta in (first, second)]
    assert names[0] and names[0].isdisjoint(names[1])


class Recording(SegmentationDataModule):
    """A data module that records whose labels its statistics read."""

    read: list[str] = []

    def _foreground(self, sample, values, meta):
        self.read.append(sample.patient)
        return super()._foreground(sample, values, meta)


def test_statistics_read_the_labelled_patients_only(demo_root):
    dm = Recording(image_size=32, normalize="ct", labelled_fraction=0.5, cache_dir=str(demo_root.parent))
    dm.setup()
    labelled = {s.patient for s in dm.labelled_samples()}
    assert labelled < {s.patient for s in dm.splits["train"]}
    assert dm.read and set(dm.read) <= labelled
    counts = count_pixels((dm._prepare(s)[1] for s in dm.labelled_samples()), dm.num_classes, 255)
    np.testing.assert_array_equal(dm.class_pixel_counts(), counts)


def _cache_key(demo_root, tmp_path, **settings) -> str:
    dm = SegmentationDataModule(image_size=32, decode_cache=str(tmp_path), preload=False, **settings)
    dm.hparams.cache_dir = str(demo_root.parent)
    dm.setup()
    return dm._cache.key(dm.splits["train"][0])


def test_the_decode_cache_key_changes_with_every_decode_argument_and_the_decode_version(
    demo_root, tmp_path, monkeypatch
):
    base = _cache_key(demo_root, tmp_path)
    assert _cache_key(demo_root, tmp_path) == base
    assert _cache_key(demo_root, tmp_path, ignore_index=254) != base
    assert _cache_key(demo_root, tmp_path, normalize="window") != base
    monkeypatch.setattr(cache_module, "DECODE_VERSION", cache_module.DECODE_VERSION + 1)
    assert _cache_key(demo_root, tmp_path) != base


def _ct_volume(root: Path) -> Path:
    """An nnU-Net CT case whose slices 1 and 3 hold the same 1000 HU organ beside different other values."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    image = np.full((16, 12, 5), -1000, np.int16)
    image[2:6, 2:6, :] = 1000
    image[8:12, 2:6, 3] = 3000  # bone on slice 3 only
    label = np.zeros(image.shape, np.uint8)
    label[2:6, 2:6, :] = 1
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    for case in ("A", "B", "C", "D"):
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{case}.nii.gz")
    meta = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 4, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_one_hu_value_is_one_input_on_every_slice_of_a_volume_by_default(make_cfg, tmp_path):
    assert make_cfg().data.normalize == "auto"
    assert make_cfg(["data=nnunet", "data.root=x", "data.class_names=[a,b]"]).data.normalize == "auto"
    root = _ct_volume(tmp_path / "ct")
    dm = SegmentationDataModule(
        str(root), "nnunet", list(LABELS), image_size=16, preload=False, split=(0.5, 0.25, 0.25)
    )
    dm.setup()
    case = sorted((s for s in dm.splits["train"] if s.patient == dm.splits["train"][0].patient), key=lambda s: s.frame)
    first, third = (load_image_meta(case[k], 1, None, dm.intensity)[0][..., 0] for k in (1, 3))
    organ = load_raw(case[1], 1)[0] == 1000
    assert organ.sum() == 16 and (load_raw(case[3], 1)[0] == 1000).sum() == 16
    assert np.ptp(first[organ]) == 0 and first[organ][0] == third[organ][0]


def _two_patients(root: Path, demo_root: Path, nested: bool = True) -> dict[str, list[Path]]:
    """Two demo patients' series at images/P00k/CT/ (NESTED) or images/P00k/, on one grid."""
    series = {}
    for k, case in enumerate(("case01", "case02"), 1):
        folder = root / "images" / f"P00{k}" / ("CT" if nested else "")
        folder.mkdir(parents=True)
        for path in sorted((demo_root / "images" / case).glob("*.dcm")):
            shutil.copy(path, folder / path.name)
        series[f"P00{k}"] = sorted(folder.glob("*.dcm"))
    return series


def test_nifti_labels_pair_with_their_series_by_path_below_masks(demo_root, tmp_path):
    root = tmp_path / "d"
    series = _two_patients(root, demo_root)
    for k, (patient, files) in enumerate(series.items(), 1):
        masks = [np.full((256, 256), k, np.uint8) for _ in files]
        label = write_nifti(files, masks, tmp_path)
        (root / "masks" / patient).mkdir(parents=True)
        label.rename(root / "masks" / patient / "CT.nii.gz")
    samples = index_dicom(root)
    assert {(s.image.parent.parent.name, s.mask.parent.name) for s in samples} == {("P001", "P001"), ("P002", "P002")}


def test_a_nifti_label_two_series_could_claim_by_name_is_refused(demo_root, tmp_path):
    root = tmp_path / "d"
    series = _two_patients(root, demo_root, nested=False)
    for site in ("a", "b"):
        label = write_nifti(series["P001"], [np.zeros((256, 256), np.uint8) for _ in series["P001"]], tmp_path)
        (root / "masks" / site).mkdir(parents=True)
        label.rename(root / "masks" / site / "P001.nii.gz")
    with pytest.raises(ValueError, match=r"its label could be .*a/P001.nii.gz and .*b/P001.nii.gz"):
        index_dicom(root)


def test_an_instance_two_segs_reference_is_refused(demo_root, tmp_path):
    root = tmp_path / "d"
    files = _two_patients(root, demo_root)["P001"]
    masks = [np.ones((256, 256), np.uint8) for _ in files]
    for name in ("first", "second"):
        (root / "masks" / name).mkdir(parents=True)
        write_seg(files, masks, ["background", "organ"], root / "masks" / name)
    with pytest.raises(ValueError, match="its label could be"):
        index_dicom(root)


def _two_echo_series(demo_root: Path, folder: Path) -> list[Path]:
    """Case 2's slices written twice into one new series (two echoes: every position twice), unlabelled."""
    folder.mkdir(parents=True)
    series_uid = generate_uid()
    for echo in (1, 2):
        for path in sorted((demo_root / "images" / "case02").glob("*.dcm")):
            ds = pydicom.dcmread(path)
            ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.EchoNumbers = series_uid, generate_uid(), echo
            ds.save_as(folder / f"echo{echo}_{path.name}")
    return sorted(folder.glob("*.dcm"))


def test_an_unlabelled_series_that_breaks_the_rules_is_skipped_in_training_and_a_labelled_one_refused(
    demo_root, tmp_path, caplog
):
    root = tmp_path / "d"
    shutil.copytree(demo_root, root)
    echoes = _two_echo_series(demo_root, root / "images" / "mr_echoes")
    samples = index_dicom(root)
    assert len(samples) == 12 * 8 and "two slices at the same position" in caplog.text
    shutil.copy(root / "masks" / "case02_s00.png", root / "masks" / f"{echoes[0].stem}.png")
    with pytest.raises(ValueError, match="two slices at the same position"):
        index_dicom(root)


def test_the_series_rules_apply_at_inference(demo_root, tmp_path):
    echoes = _two_echo_series(demo_root, tmp_path / "echoes")
    skipped: list = []
    assert group_series(echoes, skipped) == []
    assert "two slices at the same position" in skipped[0][1]
    files = sorted((demo_root / "images" / "case03").glob("*.dcm"), reverse=True)
    (series,) = group_series(files)
    heights = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p, _ in series.items]
    assert heights == sorted(heights) and len(series.frames) == len(files)


def test_context_stacks_of_a_sparsely_labelled_series_are_its_neighbouring_frames_as_at_inference(demo_root, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(demo_root, root)
    for mask in (root / "masks").glob("case00_s0[1-35-7].png"):  # case00 labelled on slices 0 and 4 only
        mask.unlink()
    case = sorted((s for s in index_dicom(root) if "case00" in s.image.name), key=lambda s: s.slice_index)
    assert [s.slice_index for s in case] == [0, 4]
    stacks = series_stacks(case, 1)
    assert [s.image.name for s in stacks[1]] == ["case00_s03.dcm", "case00_s04.dcm", "case00_s05.dcm"]
    assert stacks[1][0].label_free and not stacks[1][1].label_free
    expected = [[f"case00_s{j:02d}.dcm" for j in places] for places in stack_indices(8, 1)]
    assert [[s.image.name for s in stack] for stack in stacks] == [expected[0], expected[4]]
    dm = SegmentationDataModule(str(root), image_size=32, context_slices=1, preload=False, decode_cache=None)
    dm.setup()
    split = next(name for name, items in dm.splits.items() if any("case00" in s.image.name for s in items))
    dataset = dm.dataset(split)
    index = next(i for i, s in enumerate(dataset.samples) if s.image.name == "case00_s04.dcm")
    assert dataset[index]["image"].shape == (3, 32, 32)
