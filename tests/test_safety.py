"""Safety: checkpoints are data, keyed pseudonyms, resume whatever the moment of the kill, one-line errors."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image
from pydicom.uid import CTImageStorage, generate_uid

from medseg.config import CONFIG_DIR
from medseg.data.cache import DecodeCache
from medseg.data.convert import convert
from medseg.data.datamodule import SegmentationDataModule
from medseg.data.index import index_dicom
from medseg.data.labels import read_png
from medseg.data.prepare import prepare
from medseg.deploy.predict import main as predict_main
from medseg.deploy.predict import predict
from medseg.evaluation.scores import segmentation_metrics
from medseg.training.pipeline import resume_path, train
from medseg.utils.checkpoint import UnsafeCheckpoint, allowed_target, load_checkpoint

from .helpers import kill_when, one_error_line, run_train, start_train
from .test_dicom import new_dataset

NAME, MRN = "SMITHERSON", "MRN900001"


def test_allow_list_takes_optimizers_and_schedulers_by_type_only():
    assert allowed_target("torch.optim.AdamW") and allowed_target("torch.optim.lr_scheduler.CosineAnnealingLR")
    assert allowed_target("medseg.schedulers.WarmupCosineLR")  # medseg's own schedule, as torch's
    for name in ("medseg.schedulers.math", "medseg.schedulers.Optimizer", "torch.optim.lr_scheduler._LRScheduler"):
        assert not allowed_target(name), name  # a module, a class of another kind, a private name
    assert not allowed_target("os.system") and not allowed_target("medseg.utils.checkpoint.load_checkpoint")


def test_remote_checkpoints_are_refused_before_any_request(make_cfg):
    for key in ("ckpt_path", "init_from"):
        cfg = make_cfg([f"{key}=http://127.0.0.1:9/x.ckpt", "trainer.fast_dev_run=true", "data.image_size=64"])
        with pytest.raises(UnsafeCheckpoint, match="remote checkpoint"):
            train(cfg)
    with pytest.raises(UnsafeCheckpoint):
        load_checkpoint("s3://bucket/model.ckpt")


def test_garbage_checkpoint_and_onnx_give_one_line(tmp_path, demo_root, capsys):
    for suffix in (".ckpt", ".onnx"):
        bad = tmp_path / f"bad{suffix}"
        bad.write_bytes(b"\x80\x04garbage" * 10)
        with pytest.raises(SystemExit) as exit_info:
            predict_main([str(bad), str(demo_root / "images"), "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        assert str(bad) in one_error_line(capsys, "medseg-predict")


def _identified_tree(root: Path, empty_ids: bool = False) -> None:
    """Four patients whose folders, file names and tags hold a name and an MRN; two series per patient."""
    for p in range(4):
        study = generate_uid()
        for series in range(2):
            folder = root / "images" / f"{MRN}{p}_{NAME}" / f"series{series}"
            folder.mkdir(parents=True)
            series_uid = generate_uid()
            for k in range(2):
                ds = new_dataset(CTImageStorage, "" if empty_ids else f"{MRN}{p}", "CT")
                ds.PatientName = f"{NAME}^JOHN{p}"
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
                ds.Rows = ds.Columns = 32
                ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
                ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
                ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
                ds.PixelData = np.random.default_rng(p * 10 + k).integers(0, 2000, (32, 32), np.int16).tobytes()
                stem = f"{MRN}{p}_{NAME}_s{series}_{k}"
                ds.save_as(folder / f"{stem}.dcm", enforce_file_format=True)
                (root / "masks").mkdir(exist_ok=True)
                mask = np.zeros((32, 32), np.uint8)
                mask[8:20, 8 + k : 20 + k] = 1
                Image.fromarray(mask).save(root / "masks" / f"{stem}.png")


def test_outputs_hold_no_name_id_or_unkeyed_hash(tmp_path):
    root = tmp_path / "src"
    _identified_tree(root)
    dm = SegmentationDataModule(root=str(root), image_size=32, split_file=str(tmp_path / "split.json"))
    dm.setup("fit")
    convert(root, tmp_path / "voc")
    prepare(root, tmp_path / "prepared", image_size=32)
    forbidden = {NAME, MRN} | {hashlib.sha256(f"medseg:{MRN}{p}".encode()).hexdigest()[:12] for p in range(4)}
    outputs = [tmp_path / "split.json", *(tmp_path / "voc").rglob("*"), *(tmp_path / "prepared").rglob("*")]
    for path in outputs:
        text = path.name + (path.read_bytes().decode("latin-1") if path.is_file() else "")
        for word in forbidden:
            assert word not in text, (path, word)
    with open(tmp_path / "voc" / "manifest.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 16


def test_empty_patient_id_never_splits_a_patient(tmp_path):
    root = tmp_path / "src"
    _identified_tree(root, empty_ids=True)
    samples = index_dicom(root)
    assert len({s.patient for s in samples}) == 4  # grouped by study: both series of a patient together
    dm = SegmentationDataModule(root=str(root), image_size=32, split=(0.5, 0.25, 0.25), split_file=None)
    dm.setup("fit")
    folders = {name: {s.image.parent.parent.name for s in items} for name, items in dm.splits.items()}
    assert not (
        folders["train"] & folders["val"] or folders["train"] & folders["test"] or folders["val"] & folders["test"]
    )


def test_unwritable_decode_cache_keeps_every_sample(demo_root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    dm = SegmentationDataModule(
        root=str(demo_root), image_size=32, decode_cache=str(blocker / "cache"), split_file=None
    )
    dm.setup("fit")
    assert sum(len(v) for v in dm.splits.values()) == 96
    assert isinstance(dm._cache, DecodeCache) and dm._cache.directory is None  # warned once, then memory only


def test_runs_started_together_get_their_own_folders():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        dirs = [compose("config", return_hydra_config=True).hydra.run.dir for _ in range(2)]
    GlobalHydra.instance().clear()
    assert dirs[0] != dirs[1]


def test_class_absent_from_prediction_and_reference_is_nan_for_dice_and_iou():
    metrics = segmentation_metrics(3)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5] = 1  # class 2 appears nowhere
    metrics.update(target.clone(), target)
    values = metrics.compute()
    assert torch.isnan(values["dice"][1]) and torch.isnan(values["iou"][2])
    assert values["dice"][0] == 1 and values["iou"][1] == 1


def test_truncated_mask_error_names_the_file(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match=str(path)):
        read_png(path)


def test_predict_skips_unreadable_files_and_goes_on(demo_checkpoint, demo_root, tmp_path, caplog):
    folder = tmp_path / "in"
    shutil.copytree(demo_root / "images" / "case00", folder)
    (folder / "notes.dcm").write_text("not DICOM")
    predict(demo_checkpoint, folder, tmp_path / "out")
    assert len(list((tmp_path / "out").glob("*_mask.png"))) == 8
    assert "notes.dcm" in caplog.text


def test_convert_strict_leaves_a_manifest_and_rerun_notices_changed_labels(demo_root, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(demo_root, src)
    broken = sorted((src / "images").rglob("*.dcm"))[-1]
    broken.write_bytes(broken.read_bytes()[:-100])  # pixel data cut short
    with pytest.raises(ValueError, match=broken.name):
        convert(src, tmp_path / "voc", strict=True)
    assert (tmp_path / "voc" / "manifest.csv").is_file()
    report = convert(src, tmp_path / "voc2")
    mask = sorted((src / "masks").glob("*.png"))[0]
    row = next(r for r in report.rows if r["label_digest"] == hashlib.sha256(mask.read_bytes()).hexdigest())
    out = tmp_path / "voc2" / "SegmentationClass" / f"{row['stem']}.png"
    before = out.stat().st_mtime_ns
    Image.fromarray(np.zeros_like(np.asarray(Image.open(mask)))).save(mask)
    convert(src, tmp_path / "voc2")
    assert out.stat().st_mtime_ns != before and not np.asarray(Image.open(out)).any()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, expected",
    [
        (["data.batch_size=abc"], "data.batch_size: expected a positive integer"),
        (["data=folder"], "data.root is required"),
        (["+stage.stages.0.image_size=[64]"], "stage.stages.0.image_size: expected null, a positive integer or"),
    ],
)
def test_config_mistakes_end_in_one_line(args, expected, cache_dir, tmp_path):
    result = run_train([*args, f"hydra.run.dir={tmp_path}"], cache_dir, timeout=120, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr


@pytest.mark.slow
def test_killed_before_the_first_checkpoint_resumes_to_the_full_run(cache_dir, make_cfg, tmp_path):
    run, resumed = tmp_path / "run", tmp_path / "resumed"
    args = ["stage.stages.0.epochs=2", "trainer.limit_train_batches=3", "test=false", "debug=tiny"]
    proc = start_train([*args, f"hydra.run.dir={run}"], cache_dir)
    assert kill_when(proc, (run / "config.yaml").is_file, timeout=120)
    last = run / "checkpoints" / "last.ckpt"
    assert not last.exists()
    assert resume_path(str(last)) is None  # a run folder without a checkpoint yet: start again
    train(make_cfg([*args, f"ckpt_path={last}"], resumed))  # in-process: train.py resumes through train()
    final = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    epochs = final["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
    assert epochs == 2 and final["global_step"] == 2 * 3  # every step of both epochs
    with pytest.raises(FileNotFoundError, match="not a medseg run folder"):
        resume_path(str(tmp_path / "nowhere" / "last.ckpt"))
    assert json.loads(json.dumps(OmegaConf.to_container(OmegaConf.load(resumed / "config.yaml"))))["ckpt_path"]


@pytest.mark.slow
def test_unwritable_run_folder_ends_in_one_line(cache_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_train([f"hydra.run.dir={blocker / 'run'}"], cache_dir, timeout=120, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert str(blocker / "run") in lines[0] and "cannot write the run folder" in lines[0]
