"""DICOM ingestion on real files (pydicom's test files and pydicom-data) and on files written here."""

from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from medseg.data.convert import convert
from medseg.data.dicom import NoPixelData, read_frames, read_slice
from medseg.data.labels import nifti_slice
from medseg.utils.privacy import pseudonymous_path

from .test_dicom import new_dataset, write_ct


def pydicom_verdict(path: str) -> str:
    """'image', 'no pixels' or 'undecodable', as pydicom alone sees the file."""
    try:
        ds = pydicom.dcmread(path)
    except Exception:
        return "unreadable"
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return "no pixels"
    try:
        ds.pixel_array  # noqa: B018
    except Exception:
        return "undecodable"
    return "image"


# Files pydicom decodes whose values medseg refuses, each for a stated reason.
JUSTIFIED = {}


@pytest.mark.slow
def test_converter_over_every_real_test_file(tmp_path, caplog):
    files = sorted(f for f in set(get_testdata_files()) if Path(f).is_file())
    assert len(files) > 200, "pydicom-data should add its files to pydicom's own"
    src = tmp_path / "src"
    src.mkdir()
    for i, path in enumerate(files):
        (src / f"{i:03d}_{Path(path).name}").symlink_to(path)
    report = convert(src, tmp_path / "voc", workers=2)
    during = list(caplog.records)  # before this test's own pydicom calls below
    verdicts = {f"{i:03d}_{Path(p).name}": pydicom_verdict(p) for i, p in enumerate(files)}
    names = {pseudonymous_path(name): name for name in verdicts}  # the manifest holds keyed pseudonyms only
    converted = {names[r["source"]] for r in report.rows}
    skipped = {s for s, _ in report.skipped}
    failed = {s: reason for s, reason in report.failed}
    assert converted | skipped | set(failed) == set(verdicts)  # every file accounted for, once
    assert not (converted & set(failed)) and not (converted & skipped)
    images = {f for f, v in verdicts.items() if v == "image"}
    refused_images = {f for f in images if f in failed}
    assert refused_images == set(JUSTIFIED), {f: failed[f] for f in refused_images}
    assert {f for f, v in verdicts.items() if v == "undecodable"} <= set(failed)
    assert {f for f, v in verdicts.items() if v == "no pixels"} <= skipped
    assert all(reason for reason in failed.values())
    assert len(converted) == len(images - set(JUSTIFIED))
    written = list((tmp_path / "voc" / "JPEGImages").glob("*.png"))
    assert len(written) == len(report.rows) >= len(converted)
    assert not [r for r in during if r.name.startswith("pydicom") or "Traceback" in r.getMessage()]
    assert all("\n" not in r.getMessage() for r in during)  # one line per refusal


def _secondary_capture(path: Path, pixels: np.ndarray, photometric: str, syntax=ExplicitVRLittleEndian, **tags):
    """Write a secondary-capture image (multi-frame when PIXELS has a frame axis), compressed to SYNTAX."""
    ds = new_dataset(SecondaryCaptureImageStorage, "SC-1", "OT")
    frames = pixels.shape[0] if pixels.ndim == (4 if photometric == "RGB" else 3) else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if photometric == "RGB" else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit = ds.BitsAllocated, ds.BitsAllocated - 1
    ds.PixelRepresentation = 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_multiframe_gives_one_output_per_frame(tmp_path):
    pixels = np.stack([np.full((8, 10), 100 * (k + 1), np.uint16) for k in range(4)])
    path = _secondary_capture(tmp_path / "mf.dcm", pixels, "MONOCHROME2", WindowCenter=250, WindowWidth=500)
    frames = read_frames(path)
    assert [m.frame for _, m in frames] == [0, 1, 2, 3]
    means = [img.mean() for img, _ in frames]
    assert means == sorted(means) and len(set(means)) == 4
    single, meta = read_slice(path, frame=2)  # decodes that frame alone
    np.testing.assert_array_equal(single, frames[2][0])
    assert meta.frame == 2
    src = tmp_path / "src"
    src.mkdir()
    path.rename(src / "mf.dcm")
    report = convert(src, tmp_path / "voc")
    assert sorted(r["frame"] for r in report.rows) == [0, 1, 2, 3]


def test_multi_valued_window_picks_first_or_configured(tmp_path):
    stored = np.array([[1024, 1074, 1124, 1224]], dtype=np.int16)
    path = write_ct(tmp_path / "w.dcm", stored, center=[40, 400], width=[400, 2000])
    first = read_frames(path)[0]
    second = read_frames(path, voi_index=1)[0]
    assert first[1].window == (40.0, 400.0) and second[1].window == (400.0, 2000.0)
    hu = stored - 1024.0
    np.testing.assert_allclose(second[0], np.clip((hu - 399.5) / 1999 + 0.5, 0, 1), atol=1e-6)


def test_rgb_is_scaled_not_windowed(tmp_path):
    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0
    image, meta = read_frames(_secondary_capture(tmp_path / "rgb.dcm", rgb, "RGB"))[0]
    assert image.shape == (6, 7, 3) and meta.window is None
    np.testing.assert_allclose(image[0, 0], [1.0, 128 / 255, 0.0], atol=1e-6)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "j2k-lossless"])
def test_compressed_file_decodes_equal_to_uncompressed_twin(tmp_path, syntax):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 4096, (32, 48)).astype(np.uint16)
    tags = dict(WindowCenter=2048, WindowWidth=4096)
    plain = _secondary_capture(tmp_path / "plain.dcm", pixels, "MONOCHROME2", **tags)
    packed = _secondary_capture(tmp_path / "packed.dcm", pixels, "MONOCHROME2", syntax=syntax, **tags)
    assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_frames(packed)[0][0], read_frames(plain)[0][0])


def test_objects_without_pixels_are_skipped_with_a_reason(tmp_path):
    sr = next(p for p in sorted(get_testdata_files()) if p.endswith(".dcm") and pydicom_verdict(p) == "no pixels")
    with pytest.raises(NoPixelData, match="no pixel data"):
        read_frames(sr)
    src = tmp_path / "src"
    src.mkdir()
    (src / "object.dcm").symlink_to(sr)
    (src / "broken.dcm").write_bytes(b"DICM" * 10)
    (src / "ct.dcm").symlink_to(get_testdata_file("CT_small.dcm"))  # one image: a conversion of nothing fails
    report = convert(src, tmp_path / "voc")
    assert [s for s, _ in report.skipped] == ["object.dcm"]
    assert [s for s, _ in report.failed] == ["broken.dcm"] and "readable" in report.failed[0][1]
    with pytest.raises(ValueError, match="broken.dcm"):
        convert(src, tmp_path / "voc2", strict=True)


def test_nifti_volume_lands_on_the_right_slices_with_flips(tmp_path):
    import nibabel as nib

    rows, cols, n = 12, 16, 5
    spacing, thickness = (0.8, 0.7), 2.5
    volume = np.zeros((cols, rows, n), np.uint8)  # NIfTI (x = column, y = row, z = slice) in LPS-voxel order
    expected = []
    for k in range(n):
        label = np.zeros((rows, cols), np.uint8)
        label[k : k + 3, 2 * k : 2 * k + 4] = 1 + k % 3
        expected.append(label)
        volume[:, :, k] = label.T
    # DICOM geometry: slices at z = 10 + k * thickness, rows along +y, columns along +x.
    ras = np.diag([-spacing[1], -spacing[0], thickness, 1.0])
    ras[:3, 3] = [50.0, 40.0, 10.0]  # RAS of the first pixel: LPS (-50, -40, 10)
    # Save flipped along x and z (as ITK-SNAP may): the affine carries the flips.
    flipped = volume[::-1, :, ::-1].copy()
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, cols - 1
    flip[2, 2], flip[2, 3] = -1, n - 1
    nib.save(nib.Nifti1Image(flipped, ras @ flip), tmp_path / "labels.nii.gz")
    from medseg.data.dicom import SliceMeta

    for k in range(n):
        meta = SliceMeta("p", "s", "i", spacing, None, 0, (-50.0, -40.0, 10.0 + k * thickness), (1, 0, 0, 0, 1, 0))
        np.testing.assert_array_equal(nifti_slice(tmp_path / "labels.nii.gz", meta, (rows, cols)), expected[k])


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_converter_hides_patient_identity_and_leaves_source_untouched(demo_root, tmp_path, caplog):
    before = _tree_digest(demo_root)
    caplog.set_level(logging.DEBUG)
    report = convert(demo_root, tmp_path / "voc", workers=1)
    assert _tree_digest(demo_root) == before
    assert len(report.rows) == 96 and not report.failed
    names = {pydicom.dcmread(p).PatientName for p in demo_root.rglob("*.dcm")}
    ids = {pydicom.dcmread(p).PatientID for p in demo_root.rglob("*.dcm")}
    texts = [p.name for p in (tmp_path / "voc").rglob("*")]
    texts += [p.read_text() for p in (tmp_path / "voc").rglob("*") if p.suffix in (".csv", ".txt")]
    texts += [caplog.text, report.summary()]
    for secret in {str(n) for n in names} | ids | {"Demo", "DEMO"}:
        assert not any(secret in t for t in texts), secret
    with open(tmp_path / "voc" / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len({r["patient"] for r in rows}) == 12 and all(r["label"] == "True" for r in rows)
    sets = {
        n: (tmp_path / "voc" / "ImageSets" / "Segmentation" / f"{n}.txt").read_text().split()
        for n in ("train", "val", "test")
    }
    patients = {n: {r["patient"] for r in rows if r["stem"] in set(v)} for n, v in sets.items()}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"])
    mask = np.asarray(Image.open(tmp_path / "voc" / "SegmentationClass" / f"{rows[0]['stem']}.png"))
    assert set(np.unique(mask)) <= {0, 1, 2}
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "voc" / "JPEGImages").iterdir()}
    again = convert(demo_root, tmp_path / "voc")
    assert len(again.rows) == 96
    assert {
        p: p.stat().st_mtime_ns for p in (tmp_path / "voc" / "JPEGImages").iterdir()
    } == stamp  # up to date: skipped
    with pytest.raises(ValueError, match="must not be inside"):
        convert(demo_root, demo_root / "out")


def test_dicom_seg_labels_are_read_per_instance(demo_root, tmp_path):
    import shutil

    from medseg.data.datamodule import SegmentationDataModule
    from medseg.deploy.seg import write_seg

    root = tmp_path / "study"
    shutil.copytree(demo_root / "images" / "case02", root / "images" / "case02")
    sources = sorted((root / "images" / "case02").glob("*.dcm"))
    masks = [np.asarray(Image.open(demo_root / "masks" / f"{p.stem}.png")) for p in sources]
    (root / "masks").mkdir()
    write_seg(sources, masks, ["background", "organ", "lesion"], root / "masks")
    for name in ("case00", "case01"):  # two more patients with PNG labels, for a 3-way split
        shutil.copytree(demo_root / "images" / name, root / "images" / name)
        for png in (demo_root / "masks").glob(f"{name}_*.png"):
            shutil.copy(png, root / "masks" / png.name)
    dm = SegmentationDataModule(root=str(root), image_size=256, split=(0.34, 0.33, 0.33))
    dm.setup("fit")
    from_seg = [s for items in dm.splits.values() for s in items if s.mask.suffix == ".dcm"]
    assert len(from_seg) == len(sources)
    split = next(name for name, items in dm.splits.items() if from_seg[0] in items)
    dataset = dm.dataset(split)
    for sample in from_seg:
        _, mask = dataset.load(dataset.samples.index(sample))
        np.testing.assert_array_equal(mask, masks[sources.index(sample.image)])
