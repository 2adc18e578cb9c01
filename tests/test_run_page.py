"""report.html of a training run: self-contained, the test table and every image in it, rendered by Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from medseg.evaluation.report import main as report_main
from medseg.training.pipeline import train

SHORT = [
    "stage.stages.0.epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "data.image_size=64",
    "model.log_images=false",
]


@pytest.fixture
def reported_run(make_cfg, tmp_path):
    """A short demo run with its report.html written by `medseg-report RUN`."""
    run = tmp_path / "run"
    train(make_cfg(SHORT, run))
    report_main([str(run), "--worst", "2"])  # the demo's test split holds two volumes
    return run


def test_a_run_report_holds_config_curves_test_table_and_worst_cases(reported_run):
    page = (reported_run / "report.html").read_text()
    assert "<td>mobilenetv3</td>" in page and "<td>stage full</td>" in page  # the config summary
    table = re.search(r'<table id="test-scores">(.*?)</table>', page).group(1)
    rows = re.findall(r"<tr><td>(\w+)</td><td>(\w+)</td>", table)
    assert {cls for cls, _ in rows} == {"organ", "lesion"}
    assert {m for _, m in rows} == {"dice", "iou", "hd95", "nsd", "volume_pred_ml", "volume_true_ml"}
    images = re.findall(r'<img src="data:image/png;base64,', page)
    assert len(images) == 2 + 2  # loss and Dice curves, the two worst test volumes
    assert "http://" not in page and "https://" not in page and 'src="file' not in page  # no network, no files


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed")
def test_chromium_renders_the_run_report(reported_run, tmp_path):
    url = (reported_run / "report.html").as_uri()
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600"]
    dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert '<table id="test-scores">' in dom and dom.count("<img") == 4
    shot = tmp_path / "page.png"
    subprocess.run([*browser, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.01  # text, plots and overlays: not a blank page
