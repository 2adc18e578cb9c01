"""No patient name, ID or patient-named folder in any file a run, convert, prepare, predict or eval writes."""

from __future__ import annotations

import logging
import logging.config
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict
from PIL import Image
from pydicom.uid import BasicTextSRStorage

from medseg.config import CONFIG_DIR
from medseg.data.convert import convert
from medseg.data.prepare import prepare
from medseg.deploy.predict import predict
from medseg.evaluation.evaluate import evaluate
from medseg.training.pipeline import train
from medseg.utils.privacy import PseudonymousFormatter, lookup, output_name, register_source
from medseg.utils.privacy import main as lookup_main

from .test_dicom import new_dataset
from .test_safety import MRN, NAME, _identified_tree

PATIENT_FOLDER = f"{MRN}0_{NAME}"


def _plant_bad_files(root: Path) -> None:
    """An unreadable file and an SR object (a name in its header, no pixels) in a patient's folder."""
    folder = root / "images" / PATIENT_FOLDER
    (folder / f"{NAME}_notes.dcm").write_bytes(b"not DICOM at all")
    sr = new_dataset(BasicTextSRStorage, f"{MRN}0", "SR")
    sr.PatientName = f"{NAME}^JOHN0"
    sr.save_as(folder / f"{NAME}_report.dcm", enforce_file_format=True)


def _train_with_the_run_logging(cache_dir: Path, root: Path, run: Path) -> None:
    """train() with the root logger set up from conf/'s hydra.job_logging, as train.py runs it."""
    GlobalHydra.instance().clear()
    overrides = [
        f"data.root={root}",
        "data.image_size=32",
        "data.max_dropped.val=null",
        "data.max_dropped.test=null",
        "stage.stages.0.epochs=1",
        "logger=many",
        f"logger.mlflow.tracking_uri=sqlite:///{run}/mlruns.db",
        f"logger.mlflow.artifact_location={run}/mlartifacts",
        "callbacks.progress_bar=null",
        f"paths.cache_dir={cache_dir}",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    job_logging = OmegaConf.to_container(cfg.hydra.job_logging, resolve=False)
    job_logging["handlers"]["file"]["filename"] = str(run / "train.log")  # type: ignore[index]
    with open_dict(cfg):
        cfg.paths.output_dir = str(run)
        del cfg["hydra"]
    root_logger = logging.getLogger()
    saved = root_logger.handlers[:], root_logger.level
    run.mkdir(parents=True)
    logging.config.dictConfig(job_logging)  # type: ignore[arg-type]
    try:
        train(cfg)
    finally:
        for handler in root_logger.handlers:
            handler.close()
        root_logger.handlers[:], root_logger.level = saved
        GlobalHydra.instance().clear()


def test_no_written_file_names_the_patient(cache_dir, demo_checkpoint, tmp_path):
    root = tmp_path / "src"
    _identified_tree(root)
    _plant_bad_files(root)
    run = tmp_path / "run"
    _train_with_the_run_logging(cache_dir, root, run)
    assert "no pixel data" in (run / "train.log").read_text()  # the refusal lines are there, pseudonymous
    convert(root, tmp_path / "voc")
    prepare(root, tmp_path / "prepared", image_size=32)
    predict(demo_checkpoint, root / "images", tmp_path / "predicted", nifti=True)
    evaluate(demo_checkpoint, root, tmp_path / "evaluated")
    forbidden = (NAME, MRN, PATIENT_FOLDER)
    written = [
        p for folder in ("run", "voc", "prepared", "predicted", "evaluated") for p in (tmp_path / folder).rglob("*")
    ]
    # a DICOM SEG copies its source's patient module, as DICOM requires to file it with the study
    written = [p for p in written if not p.name.startswith("seg_") or p.suffix != ".dcm"]
    assert any(p.name.startswith("events.out.tfevents") for p in written) and any(p.suffix == ".png" for p in written)
    assert any(p.name == "mlruns.db" for p in written) and (run / "split.json").is_file()
    for path in written:
        text = path.name + (path.read_bytes().decode("latin-1") if path.is_file() else "")
        for word in forbidden:
            assert word not in text, (path, word)


def test_image_outputs_are_pseudonyms_unique_and_resolve_back(demo_checkpoint, demo_root, tmp_path, capsys):
    source = tmp_path / "in"
    frame = np.asarray(Image.open(next((demo_root / "masks").rglob("*.png")))) * 100
    for folder in ("a", "b"):
        (source / folder).mkdir(parents=True)
        Image.fromarray(frame.astype(np.uint8)).save(source / folder / f"{NAME}_JOHN_{MRN}.png")
    predict(demo_checkpoint, source, tmp_path / "out")
    masks = sorted((tmp_path / "out").glob("*_mask.png"))
    assert len(masks) == 2 and not any(NAME in p.name or MRN in p.name for p in masks)  # one each, no overwrite
    kept = tmp_path / "kept"
    predict(demo_checkpoint, source, kept, keep_names=True)
    assert (kept / f"a__{NAME}_JOHN_{MRN}_mask.png").is_file()
    name = masks[0].name.removesuffix("_mask.png")
    assert lookup([name], source)[name] in (["a/" + f"{NAME}_JOHN_{MRN}.png"], ["b/" + f"{NAME}_JOHN_{MRN}.png"])
    lookup_main([name, "--root", str(source)])
    assert f"{NAME}_JOHN_{MRN}.png" in capsys.readouterr().out
    assert output_name(source / "a" / "x.png", source, False) != output_name(source / "b" / "x.png", source, False)


def test_eval_names_cases_by_pseudonym_unless_asked(demo_checkpoint, demo_root, tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    mask = np.asarray(Image.open(next((demo_root / "masks").rglob("*.png"))))
    for k in range(2):
        Image.fromarray((mask * 100).astype(np.uint8)).save(data / "images" / f"{NAME}_{MRN}{k}.png")
        Image.fromarray(mask.astype(np.uint8)).save(data / "masks" / f"{NAME}_{MRN}{k}.png")
    evaluate(demo_checkpoint, data, tmp_path / "e", mask_mapping={"2": 1})
    for path in (tmp_path / "e").rglob("*"):
        text = path.name + (path.read_text(errors="replace") if path.suffix == ".csv" else "")
        assert NAME not in text and MRN not in text, path
    evaluate(demo_checkpoint, data, tmp_path / "kept", mask_mapping={"2": 1}, keep_names=True)
    assert f"{NAME}_{MRN}0" in (tmp_path / "kept" / "cases.csv").read_text()


@pytest.mark.parametrize("name", ["with space", "plain"])
def test_file_log_lines_name_sources_by_pseudonym(tmp_path, name):
    folder = tmp_path / "data" / "images" / f"{MRN}_{name}"
    folder.mkdir(parents=True)
    (folder / "x 1.dcm").write_text("")
    register_source(tmp_path / "data")
    record = logging.makeLogRecord(
        {"msg": "%s: not a readable DICOM file (%s)", "args": (folder / "x 1.dcm", f"{folder}/x 1.dcm: EOF")}
    )
    line = PseudonymousFormatter("%(message)s").format(record)
    assert MRN not in line and name not in line and line.startswith(str(tmp_path / "data") + "/")
    assert line.count(": ") == 2  # the path ends where the file's name ends, spaces and all
