"""Evaluation metrics and their empty-mask convention, and medseg-eval on the demo data."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.metrics import compute_hausdorff_distance
from torchmetrics.functional.segmentation import dice_score

from medseg.evaluation.evaluate import evaluate, main
from medseg.evaluation.scores import case_scores
from medseg.training.pipeline import train


def test_scores_match_hand_values_torchmetrics_and_monai():
    target = np.zeros((40, 40), np.uint8)
    target[10:20, 10:20] = 1  # 100 px
    target[25:35, 25:30] = 2  # 50 px
    pred = np.zeros_like(target)
    pred[10:20, 12:22] = 1  # shifted 2 columns: overlap 80
    pred[25:35, 25:30] = 2  # exact
    spacing = [0.5, 0.7]  # row, column spacing in mm
    scores = case_scores(pred, target, 3, spacing)
    np.testing.assert_allclose(scores["dice"], [160 / 200, 1.0], atol=1e-4)
    np.testing.assert_allclose(scores["iou"], [80 / 120, 1.0], atol=1e-4)
    np.testing.assert_allclose(scores["hd95"], [2 * 0.7, 0.0], atol=1e-4)  # a 2-column shift, in mm
    p, t = torch.from_numpy(pred.astype(np.int64))[None], torch.from_numpy(target.astype(np.int64))[None]
    reference = dice_score(p, t, 3, include_background=False, average="none", input_format="index")[0]
    np.testing.assert_allclose(scores["dice"], reference.numpy(), atol=1e-4)
    onehot = [F.one_hot(x, 3).permute(0, 3, 1, 2).float() for x in (p, t)]
    monai = compute_hausdorff_distance(onehot[0], onehot[1], percentile=95, spacing=spacing)[0].numpy()
    np.testing.assert_allclose(scores["hd95"], monai, atol=1e-4)
    assert case_scores(pred, target, 3)["hd95"][0] == pytest.approx(2.0)  # pixels without spacing


def test_empty_mask_convention():
    target = np.zeros((20, 20), np.uint8)
    target[5:10, 5:10] = 1
    pred = np.zeros_like(target)
    pred[5:10, 5:10] = 1
    pred[12:15, 12:15] = 2  # class 2: empty reference, non-empty prediction
    scores = case_scores(pred, target, 4)
    assert scores["dice"][0] == 1.0 and scores["hd95"][0] == 0.0
    assert scores["dice"][1] == 0.0 and scores["iou"][1] == 0.0 and math.isnan(scores["hd95"][1])
    assert all(math.isnan(scores[m][2]) for m in ("dice", "iou", "hd95"))  # class 3 empty in both


def test_surface_distances_of_the_classes_in_both_masks_only(recwarn):
    target = np.zeros((30, 30), np.uint8)
    target[5:15, 5:15], target[20:25, 20:25] = 1, 3  # class 2 absent from both, class 3 missed
    pred = np.zeros_like(target)
    pred[6:16, 5:15] = 1
    scores = case_scores(pred, target, 4, [1.0, 0.8], nsd_tolerance=0.5)
    alone = case_scores(pred, np.where(target == 1, 1, 0), 2, [1.0, 0.8], nsd_tolerance=0.5)
    np.testing.assert_allclose([scores["hd95"][0], scores["nsd"][0]], [alone["hd95"][0], alone["nsd"][0]])
    assert 0 < scores["nsd"][0] < 1 and scores["hd95"][0] == pytest.approx(1.0)
    assert math.isnan(scores["nsd"][1]) and scores["nsd"][2] == 0.0 and math.isnan(scores["hd95"][2])
    assert not [w for w in recwarn if "is all 0" in str(w.message)]  # MONAI is not asked about empty classes


def test_eval_cli_on_demo_dicom(demo_checkpoint, demo_root, tmp_path, capsys):
    main([str(demo_checkpoint), str(demo_root), "--out", str(tmp_path / "volumes"), "--worst", "2"])
    with open(tmp_path / "volumes" / "cases.csv") as handle:
        volumes = list(csv.DictReader(handle))
    assert len(volumes) == 12 * 2 and {int(r["slices"]) for r in volumes} == {8}  # one row per series and class
    assert all(float(r["volume_true_ml"]) > 0 for r in volumes if r["cls"] == "organ")
    assert len(list((tmp_path / "volumes" / "worst").glob("*_slice*.png"))) == 2
    main([str(demo_checkpoint), str(demo_root), "--out", str(tmp_path), "--worst", "3", "--per-slice"])
    assert "dice" in capsys.readouterr().out
    with open(tmp_path / "cases.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 96 * 2 and {r["cls"] for r in rows} == {"organ", "lesion"}
    assert {r["unit"] for r in rows} == {"mm"}
    assert not any("DEMO" in r["case"] for r in rows)
    with open(tmp_path / "summary.csv") as handle:
        summary = {(r["cls"], r["metric"]): r for r in csv.DictReader(handle)}
    organ = float(summary[("organ", "dice")]["mean"])
    assert 0.2 < organ <= 1.0
    lesion_cases = int(summary[("lesion", "dice")]["n"])
    assert lesion_cases < 96  # slices without lesion in reference or prediction are NaN, left out
    assert len(list((tmp_path / "worst").glob("*.png"))) == 3


def test_eval_cli_restricted_to_a_runs_test_split(demo_checkpoint, demo_root, tmp_path, capsys):
    split_file = demo_checkpoint.parent.parent / "split.json"
    test_images = json.loads(split_file.read_text())["splits"]["test"]
    args = [str(demo_checkpoint), str(demo_root), "--out", str(tmp_path), "--split-file", str(split_file)]
    main([*args, "--per-slice"])
    with open(tmp_path / "cases.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert 0 < len(test_images) < 96 and len(rows) == 2 * len(test_images)
    with pytest.raises(SystemExit):
        main([*args, "--split", "holdout"])
    assert "no split 'holdout'" in capsys.readouterr().err


@pytest.mark.slow  # a short run at the demo's native 256 px
def test_the_test_step_and_medseg_eval_give_the_same_dice(make_cfg, demo_root, tmp_path):
    args = ["data.image_size=256", "stage.stages.0.epochs=8", "model.channels_last=false"]
    _, metrics = train(make_cfg([*args, "model.log_images=false"]))
    run = tmp_path / "run"
    best = run / "checkpoints" / "best.ckpt"
    evaluate(best, demo_root, tmp_path / "eval", worst=0, split_file=run / "split.json", split="test")
    with open(tmp_path / "eval" / "summary.csv") as handle:
        split = {r["cls"]: float(r["mean"]) for r in csv.DictReader(handle) if r["metric"] == "dice_split"}
    assert metrics["test/dice_mean"] > 0.2, metrics  # a model that segments, not an empty prediction
    assert split["mean"] == pytest.approx(metrics["test/dice_mean"], abs=1e-6)
    assert split["organ"] == pytest.approx(metrics["test/dice_organ"], abs=1e-6)
