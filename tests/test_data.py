"""Indexing, patient split, data_fraction subsets, augmentation and the data module."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medseg.data.augment import build_augmentation
from medseg.data.datamodule import SegmentationDataModule
from medseg.data.index import index_dicom, index_folder
from medseg.data.split import fold_split, split_patients, subset_patients
from medseg.utils.privacy import pseudonym

from .conftest import CXR_LUNG, requires_cxr_lung


def test_demo_dataset_is_real_dicom_with_distinct_patients(demo_root):
    samples = index_dicom(demo_root)
    assert len(samples) == 96
    assert len({s.patient for s in samples}) == 12
    masks = np.stack([np.asarray(Image.open(s.mask)) for s in samples])
    assert set(np.unique(masks)) == {0, 1, 2}


def test_split_keeps_patients_apart_and_is_seeded():
    patients = [f"p{i}" for i in range(40)]
    parts = split_patients(patients, (0.7, 0.15, 0.15), seed=3)
    sets = [set(v) for v in parts.values()]
    assert sum(len(s) for s in sets) == 40
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert [len(v) for v in parts.values()] == [28, 6, 6]
    assert parts == split_patients(reversed(patients), (0.7, 0.15, 0.15), seed=3)
    assert parts != split_patients(patients, (0.7, 0.15, 0.15), seed=4)


@pytest.mark.parametrize("n", [10, 37, 100])
def test_data_fraction_sizes_and_nesting(n):
    patients = [f"p{i}" for i in range(n)]
    subsets = {f: subset_patients(patients, f, seed=1) for f in (0.2, 0.6, 1.0)}
    for fraction, subset in subsets.items():
        assert len(subset) == max(1, round(n * fraction))
    assert set(subsets[0.2]) <= set(subsets[0.6]) <= set(subsets[1.0]) == set(patients)
    with pytest.raises(ValueError):
        subset_patients(patients, 0.0)


def test_datamodule_split_file_and_no_patient_leak(demo_root, tmp_path):
    dm = SegmentationDataModule(root=str(demo_root), split_file=str(tmp_path / "split.json"))
    dm.setup("fit")
    by_split = {k: {s.patient for s in v} for k, v in dm.splits.items()}
    assert not (
        by_split["train"] & by_split["val"]
        or by_split["train"] & by_split["test"]
        or by_split["val"] & by_split["test"]
    )
    payload = json.loads((tmp_path / "split.json").read_text())
    written = {k: {e["patient"] for e in v} for k, v in payload["splits"].items()}
    assert written == {k: {pseudonym(p) for p in v} for k, v in by_split.items()}
    assert "DEMO-" not in (tmp_path / "split.json").read_text()
    for fraction, expected in [(0.25, 2), (0.5, 4), (1.0, 8)]:
        dm.data_fraction = fraction
        assert len({s.patient for s in dm.train_samples()}) == expected
        assert len(dm.train_dataloader().dataset) == expected * 8
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (8, 1, 128, 128) and batch["image"].dtype.is_floating_point
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["mask"].dtype == np.int64 or str(batch["mask"].dtype) == "torch.int64"


def test_decode_cache_second_epoch_never_decodes(demo_root, monkeypatch, tmp_path):
    import medseg.data.sources as dmod  # where a sample is decoded

    calls = []
    real = dmod.load_image_meta
    monkeypatch.setattr(dmod, "load_image_meta", lambda *a, **k: calls.append(1) or real(*a, **k))
    dm = SegmentationDataModule(root=str(demo_root), preload=False)
    dm.set_stage(aug_strength="high")
    dm.setup("fit")
    epochs = []
    for _ in range(2):
        before = len(calls)
        for _ in dm.train_dataloader():
            pass
        epochs.append(len(calls) - before)
    assert epochs == [len(dm.splits["train"]), 0]


def test_disk_cache_is_keyed_by_content_and_settings(demo_root, monkeypatch, tmp_path):
    import shutil

    import medseg.data.sources as dmod  # where a sample is decoded

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    calls = []
    real = dmod.load_image_meta
    monkeypatch.setattr(dmod, "load_image_meta", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = tmp_path / "decoded"

    def setup(**kwargs):
        calls.clear()
        SegmentationDataModule(root=str(root), decode_cache=str(cache), **kwargs).setup("fit")
        return len(calls)

    assert setup() == 96  # first run decodes everything
    assert setup() == 0  # a new run reuses the disk cache
    assert setup(image_size=96) == 96  # other preprocessing, other keys
    mask = root / "masks" / "case00_s03.png"
    mask.write_bytes(mask.read_bytes())  # same content, new mtime: still cached
    assert setup() == 0
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(mask)  # new content: decoded again
    assert setup() == 1


@pytest.mark.parametrize("strength", ["low", "mid", "high"])
def test_augmentation_keeps_classes_and_alignment(strength):
    rng = np.random.default_rng(0)
    transform = build_augmentation(strength, seed=0)  # repeatable: the same 20 draws on every run
    for _ in range(20):
        mask = np.zeros((96, 96), np.uint8)
        y, x = rng.integers(20, 50, 2)
        mask[y : y + 30, x : x + 25] = 1
        mask[y + 8 : y + 16, x + 8 : x + 16] = 2
        image = (mask.astype(np.float32) / 2.0)[..., None]
        out = transform(image=image, mask=mask)
        img, m = np.clip(out["image"][..., 0], 0, 1), out["mask"]
        assert set(np.unique(m)) <= {0, 1, 2}
        assert m.dtype == np.uint8
        # Image and mask moved together: intensity order follows the labels pixel by pixel.
        means = [img[m == k].mean() for k in (0, 1, 2) if (m == k).any()]
        assert means == sorted(means) and means[-1] - means[0] > 0.3
        inside = m > 0
        edge_free = img[inside] > (img[m == 0].mean() + img[inside].mean()) / 2
        assert edge_free.mean() > 0.9
    assert build_augmentation("none") is None
    with pytest.raises(ValueError):
        build_augmentation("extreme")


def test_folder_layout_with_mask_mapping_and_bad_values(tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(6):
        img = np.full((40, 50), 30 * i, np.uint8)
        mask = np.zeros((40, 50), np.uint8)
        mask[10:20, 10:30] = 255
        Image.fromarray(img).save(tmp_path / "images" / f"pat{i}_a.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"pat{i}_a.png")
    samples = index_folder(tmp_path, r"^(pat\d+)_")
    assert [s.patient for s in samples] == [f"pat{i}" for i in range(6)]
    dm = SegmentationDataModule(
        root=str(tmp_path),
        layout="folder",
        class_names=["bg", "fg"],
        mask_mapping={255: 1},
        patient_regex=r"^(pat\d+)_",
        image_size=32,
        batch_size=2,
    )
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert set(batch["mask"].unique().tolist()) == {0, 1}
    bad = SegmentationDataModule(
        root=str(tmp_path), layout="folder", class_names=["bg", "fg"], mask_mapping={255: 7}, image_size=32
    )
    with pytest.raises(ValueError, match=r"pat\d_a.png: mask values \[7\]"):
        bad.setup("fit")


@requires_cxr_lung()
def test_cxr_lung_folder_indexes_one_patient_per_image():
    samples = index_folder(CXR_LUNG, r"^([A-Z]+_\d+)")
    assert len(samples) == 504
    assert len({s.patient for s in samples}) == 504
    dm = SegmentationDataModule(
        root=str(CXR_LUNG),
        layout="folder",
        class_names=["background", "lung"],
        mask_threshold=128,
        patient_regex=r"^([A-Z]+_\d+)",
        image_size=64,
    )
    dm.setup("fit")
    assert len(dm.splits["train"]) == 504 - 2 * round(504 * 0.15)
    image, mask = dm.dataset("val").load(0)
    assert image.shape == (64, 64, 1) and set(np.unique(mask)) == {0, 1}


def test_folds_partition_train_and_val_and_never_touch_test():
    parts = split_patients([f"p{i:03d}" for i in range(53)], (0.7, 0.15, 0.15), seed=3)
    folds = [fold_split(parts, 5, k, seed=3) for k in range(5)]
    vals = [set(f["val"]) for f in folds]
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1 :])  # disjoint folds
    assert set().union(*vals) == set(parts["train"]) | set(parts["val"])  # union: train+val
    for f in folds:
        assert f["test"] == parts["test"] and not set(f["test"]) & (set(f["train"]) | set(f["val"]))
        assert not set(f["train"]) & set(f["val"])
        assert len(f["train"]) + len(f["val"]) == len(parts["train"]) + len(parts["val"])
    sizes = [len(v) for v in vals]
    assert sum(sizes) == len(parts["train"]) + len(parts["val"]) and max(sizes) - min(sizes) <= 1  # balanced
    with pytest.raises(ValueError, match="fold"):
        fold_split(parts, 5, 5)


def test_datamodule_folds_keep_a_patients_slices_together(demo_root, tmp_path):
    dms = []
    for k in range(3):
        dm = SegmentationDataModule(root=str(demo_root), image_size=32, num_folds=3, fold=k, preload=False)
        dm.setup("fit")
        dms.append(dm)
    assert len({tuple(dm.patients["test"]) for dm in dms}) == 1
    for dm in dms:  # a patient's slices are all in one split
        owners = {}
        for name, items in dm.splits.items():
            for s in items:
                assert owners.setdefault(s.patient, name) == name
    assert set().union(*(dm.patients["val"] for dm in dms)) == set(dms[0].patients["train"] + dms[0].patients["val"])


@requires_cxr_lung()
def test_include_and_exclude_regex_select_one_site():
    def names(**kwargs):
        dm = SegmentationDataModule(
            root=str(CXR_LUNG), layout="folder", patient_regex=r"^([A-Z]+_\d+)", preload=False, **kwargs
        )
        dm.setup("fit")
        return [s.image.name for items in dm.splits.values() for s in items]

    montgomery = names(include_regex="^MCUCXR_")
    shenzhen = names(exclude_regex="^MCUCXR_")
    assert len(montgomery) == 138 and all(n.startswith("MCUCXR_") for n in montgomery)
    assert len(shenzhen) == 366 and all(n.startswith("CHNCXR_") for n in shenzhen)
    abnormal = names(include_regex=r"_1\.png$", exclude_regex="^CHNCXR_")  # both, combined
    assert sorted(abnormal) == sorted(n for n in montgomery if n.endswith("_1.png")) and 0 < len(abnormal) < 138
    with pytest.raises(ValueError, match="no image file name matches"):
        names(include_regex="^NOSUCHSITE_")


def test_labelled_fraction_caps_the_training_patients(demo_root):
    full = SegmentationDataModule(root=str(demo_root), image_size=32, preload=False)
    half = SegmentationDataModule(root=str(demo_root), image_size=32, preload=False, labelled_fraction=0.5)
    for dm in (full, half):
        dm.setup("fit")
    full.data_fraction = 0.5
    assert [s.image for s in half.train_samples()] == [s.image for s in full.train_samples()]
    assert len({s.patient for s in half.train_samples()}) < len(set(half.patients["train"]))
