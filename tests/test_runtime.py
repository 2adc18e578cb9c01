"""The runtime install (`pip install -e .`, no extras): no torch, and the same predictions as the full install."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from medseg.deploy.export import export_checkpoint
from medseg.deploy.predict import predict
from medseg.deploy.quantize import quantize_checkpoint_model

RUNTIME = os.environ.get("MEDSEG_RUNTIME_PYTHON")  # .ci/run builds that venv and sets this


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    """Every mask PNG, NIfTI label volume and DICOM SEG pixel array under FOLDER, by file name."""
    out = {p.name: np.asarray(Image.open(p)) for p in folder.glob("*_mask.png")}
    out |= {p.name: np.asarray(nib.load(p).dataobj) for p in folder.glob("*.nii.gz")}
    out |= {p.name: pydicom.dcmread(p).pixel_array for p in folder.glob("seg_*.dcm")}
    return out


@pytest.fixture(scope="module")
def exported(demo_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The demo checkpoint as FP32 ONNX, INT8 ONNX, and a two-member ensemble with hflip baked in."""
    folder = tmp_path_factory.mktemp("runtime-models")
    fp32, _ = export_checkpoint(demo_checkpoint, folder / "fp32.onnx")
    report = quantize_checkpoint_model(demo_checkpoint, fp32, tolerance=1.0, calibration_batches=2)
    ensemble, _ = export_checkpoint([demo_checkpoint, demo_checkpoint], folder / "ensemble.onnx", tta=["hflip"])
    return {"fp32": fp32, "int8": report.path, "ensemble": ensemble}


@pytest.mark.slow
@pytest.mark.skipif(not RUNTIME, reason="MEDSEG_RUNTIME_PYTHON (a venv with `pip install -e .` only) is not set")
def test_the_runtime_install_predicts_what_the_full_install_does(exported, demo_checkpoint, demo_root, tmp_path):
    runtime = Path(str(RUNTIME))
    for module in ("torch", "lightning", "hydra", "mlflow"):
        assert subprocess.run([runtime, "-c", f"import {module}"], capture_output=True).returncode != 0, module
    series = demo_root / "images" / "case00"
    cli = runtime.parent / "medseg-predict"
    for name, model in exported.items():
        full, light = tmp_path / "full" / name, tmp_path / "runtime" / name
        predict(model, series, full, nifti=True)
        result = subprocess.run([cli, model, series, "--out", light, "--nifti"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        expected, got = _arrays(full), _arrays(light)
        assert expected.keys() == got.keys() and any(k.endswith(".nii.gz") for k in got), sorted(got)
        assert any(k.startswith("seg_") for k in got) and len(got) > 3
        for key, array in expected.items():
            np.testing.assert_array_equal(got[key], array, err_msg=f"{name}: {key}")
    refused = subprocess.run([cli, demo_checkpoint, series, "--out", tmp_path / "ckpt"], capture_output=True, text=True)
    assert refused.returncode == 2 and "pip install 'medseg[train]'" in refused.stderr.strip().splitlines()[-1]
