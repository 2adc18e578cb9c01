"""Bad input ends right: read correctly, or refused in one line that names the file or the key."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from medseg.config import validate_config
from medseg.data.convert import main as convert_main
from medseg.data.datamodule import SegmentationDataModule
from medseg.data.decode import load_image
from medseg.data.dicom import apply_window, read_slice
from medseg.data.index import Sample, index_dicom
from medseg.deploy.predict import main as predict_main
from medseg.deploy.predict import predict
from medseg.evaluation.results import read_results
from medseg.training.pipeline import resume_path, train

from .test_dicom import new_dataset, write_ct


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims WIDTH x HEIGHT with one tiny IDAT: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def _image(path: Path, kind: str = "image") -> np.ndarray:
    return load_image(Sample(path, path, "", kind), 1)


def test_16_bit_png_is_read_at_full_depth(tmp_path):
    values = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "cxr16.png")
    image = _image(tmp_path / "cxr16.png")[..., 0]
    assert (image == 1.0).mean() < 0.01 and abs(image.mean() - 0.5) < 0.01
    np.testing.assert_allclose(image, values / 65535.0, atol=1e-6)


def _float_dicom(path: Path, pixels: np.ndarray) -> Path:
    ds = new_dataset(CTImageStorage, "FLOAT-1", "CT")
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 1, "MONOCHROME2", 32
    ds.FloatPixelData = pixels.astype(np.float32).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_nan_or_infinite_pixels_are_refused_naming_the_file(tmp_path):
    pixels = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    assert np.isfinite(_image(_float_dicom(tmp_path / "ok.dcm", pixels), "dicom")).all()
    for name, bad in (("nan", np.nan), ("inf", np.inf)):
        broken = pixels.copy()
        broken[3, 3] = bad
        path = _float_dicom(tmp_path / f"{name}.dcm", broken)
        with pytest.raises(ValueError, match=f"{path}: pixel data hold NaN or infinite"):
            _image(path, "dicom")
    Image.fromarray(np.full((8, 8), np.nan, np.float32), mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match="nan.tif: pixel data hold NaN"):
        _image(tmp_path / "nan.tif")


def test_constant_slices_without_window_decode_to_zero(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero
        blank, _ = read_slice(write_ct(tmp_path / "blank.dcm", np.full((16, 16), 1024), center=None))
        near = np.full((16, 16), 0.5)
        near[0, 0] = 0.5001
        nearly, _ = read_slice(_float_dicom(tmp_path / "near.dcm", near))
    assert not blank.any() and np.isfinite(nearly).all() and nearly.max() <= 1
    assert apply_window(np.array([0.0, 10.0, 11.0]), 10.5, 1).tolist() == [0.0, 0.0, 1.0]  # width 1: a step


def test_a_file_name_that_is_not_utf8_is_read(tmp_path):
    root = tmp_path / "data"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(6):
        stem = (b"p%d_\xff\xfe" % k).decode("utf-8", "surrogateescape")  # as os.listdir returns it
        Image.fromarray(rng.integers(0, 255, (32, 32), np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray((rng.random((32, 32)) > 0.5).astype(np.uint8)).save(root / "masks" / f"{stem}.png")
    split = tmp_path / "split.json"
    dm = SegmentationDataModule(
        root=str(root),
        layout="folder",
        image_size=32,
        class_names=["background", "x"],
        patient_regex=r"^(p\d)",
        split_file=str(split),
    )
    dm.setup("fit")
    assert sum(len(v) for v in dm.splits.values()) == 6 and json.loads(split.read_text())["splits"]["train"]


def _two_patients_same_file_name(root: Path) -> None:
    for patient in ("A", "B"):
        folder = root / "images" / patient
        folder.mkdir(parents=True)
        write_ct(folder / "IM-0001.dcm", np.zeros((16, 16)))
        ds = pydicom.dcmread(folder / "IM-0001.dcm")
        ds.PatientID = patient
        ds.save_as(folder / "IM-0001.dcm")
    (root / "masks").mkdir()


def test_labels_pair_by_path_and_an_ambiguous_pairing_is_refused(tmp_path):
    root = tmp_path / "one_mask"
    _two_patients_same_file_name(root)
    Image.fromarray(np.ones((16, 16), np.uint8)).save(root / "masks" / "IM-0001.png")
    with pytest.raises(ValueError, match=r"IM-0001.png: label of both .*A/IM-0001.dcm and .*B/IM-0001.dcm"):
        index_dicom(root)
    root = tmp_path / "by_path"
    _two_patients_same_file_name(root)
    for patient in ("A", "B"):
        (root / "masks" / patient).mkdir()
        Image.fromarray(np.ones((16, 16), np.uint8)).save(root / "masks" / patient / "IM-0001.png")
    pairs = {s.image.parent.name: s.mask.parent.name for s in index_dicom(root)}
    assert pairs == {"A": "A", "B": "B"}


def test_a_garbage_dcm_among_the_masks_is_named(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    (root / "masks" / "notes.dcm").write_text("not DICOM")
    with pytest.raises(ValueError, match="notes.dcm: not a readable DICOM file among the masks"):
        index_dicom(root)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.window=nosuchpreset", "data.window: expected null, a preset"),
        ("data.mask_threshold=abc", "data.mask_threshold: expected null or an integer"),
        ("data.mask_mapping={a: 1}", "data.mask_mapping: expected null or a mapping"),
    ],
)
def test_decoding_settings_are_checked_before_any_decoding(make_cfg, override, expected):
    with pytest.raises(ValueError, match=expected):
        validate_config(make_cfg([override]))


def test_a_mistyped_ckpt_path_is_an_error_not_a_restart(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}")
    assert resume_path(str(run / "checkpoints" / "last.ckpt")) is None  # killed before its first checkpoint
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"lastt.ckpt: checkpoint not found; .* holds last.ckpt"):
        resume_path(str(run / "checkpoints" / "lastt.ckpt"))


def test_last_checkpoint_is_refreshed_at_every_epoch_end(make_cfg, tmp_path):
    args = ["stage.stages.0.epochs=2", "trainer.limit_train_batches=3", "data.image_size=32", "test=false"]
    train(make_cfg([*args, "+callbacks.model_checkpoint.save_top_k=0", "model.log_images=false"]))
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 6 and last["epoch"] == 1


def test_a_full_disk_is_named(make_cfg, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        cfg = make_cfg(["stage.stages.0.epochs=1", "trainer.limit_train_batches=2", "data.image_size=32"], full)
        with pytest.raises(OSError, match=f"no space left on device: {full}/checkpoints/"):
            train(cfg)
    finally:
        subprocess.run(["umount", "-l", str(full)], check=True)


def test_convert_of_nothing_fails_and_a_tampered_manifest_row_is_redone(demo_root, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for src in (tmp_path / "empty", tmp_path / "nowhere"):
        with pytest.raises(SystemExit) as exit_info:
            convert_main([str(src), str(tmp_path / "out")])
        assert exit_info.value.code == 2 and str(src) in capsys.readouterr().err
    src = tmp_path / "src"
    shutil.copytree(demo_root / "images" / "case00", src)
    convert_main([str(src), str(tmp_path / "voc")])
    manifest = tmp_path / "voc" / "manifest.csv"
    first = manifest.read_text().splitlines()[1].split(",")[0]
    (tmp_path / "voc" / "JPEGImages" / f"{first}.png").unlink()
    manifest.write_text(manifest.read_text().replace(first, "../../x", 1))
    convert_main([str(src), str(tmp_path / "voc")])
    assert (tmp_path / "voc" / "JPEGImages" / f"{first}.png").is_file() and "../../x" not in manifest.read_text()
    assert not (tmp_path / "x.png").exists()


def test_predict_fails_when_nothing_is_readable_and_reads_every_frame(demo_checkpoint, tmp_path, capsys):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.dcm").write_text("not DICOM")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(junk / "b.png")
    (junk / "b.png").write_bytes((junk / "b.png").read_bytes()[:20])
    with pytest.raises(SystemExit) as exit_info:
        predict_main([str(demo_checkpoint), str(junk), "--out", str(tmp_path / "p")])
    assert exit_info.value.code == 2 and "none of its 2 input files could be read" in capsys.readouterr().err
    segs = predict(demo_checkpoint, _enhanced_mr(tmp_path / "mr.dcm"), tmp_path / "mr")
    assert len(list((tmp_path / "mr").glob("*_mask.png"))) == 10
    assert len(segs) == 1 and pydicom.dcmread(segs[0]).NumberOfFrames == 10 * 2  # 10 frames x 2 segments


def _enhanced_mr(path: Path) -> Path:
    """pydicom's 10-frame enhanced MR with the per-frame geometry a scanner writes (the test file has none)."""
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    shared, measures, orientation = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [1.0, 1.0], 2.0
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for i in range(int(ds.NumberOfFrames)):
        frame, position = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, 2.0 * i]
        frame.PlanePositionSequence = [position]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.save_as(path)
    return path


def test_a_decompression_bomb_is_refused_and_predict_goes_on(demo_checkpoint, demo_root, tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(ValueError, match="bomb.png: refused, image too large"):
        _image(bomb)
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(bomb, source / "a_bomb.png")
    mask = np.asarray(Image.open(next((demo_root / "masks").rglob("*.png"))))
    Image.fromarray((mask * 100).astype(np.uint8)).save(source / "b_good.png")
    predict(demo_checkpoint, source, tmp_path / "out")
    assert len(list((tmp_path / "out").glob("*_mask.png"))) == 1


def test_a_broken_results_line_is_left_out_with_a_warning(tmp_path, caplog):
    lines = [json.dumps({"job": 1, "backbone": "resnet18"}), '{"job": 0, "backbo', json.dumps({"job": 0})]
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    assert [r["job"] for r in read_results(tmp_path)] == [0, 1]
    assert "results.jsonl:2: not a result record" in caplog.text


@pytest.mark.parametrize("key", ["aug_strength", "data_fraction"])
def test_a_setting_the_stage_owns_is_refused_under_data(make_cfg, key):
    value = "high" if key == "aug_strength" else "0.5"
    for override in (f"data.{key}={value}", f"+data.{key}={value}"):
        with pytest.raises(ValueError, match=rf"data.{key}: the training stage owns it; set stage.stages.0.{key}"):
            validate_config(make_cfg([override]))
