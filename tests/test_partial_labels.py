"""Partly labelled cases: a class a case does not contour is unknown there, in the loss, the batches and the scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg.data.datamodule import SegmentationDataModule
from medseg.data.partial_labels import mask_unlabelled, read_missing_labels
from medseg.data.prepare import prepare
from medseg.data.stream import StreamDataModule
from medseg.evaluation.volumes import volume_means
from medseg.losses import DiceLoss, FocalLoss, HybridLoss

from .test_nifti import write_dataset

CLASSES = ["background", "liver", "spleen"]


def _logits(winner: torch.Tensor) -> torch.Tensor:
    """[1, 3, 4, 4] logits that put 6 on class WINNER[h, w] of each pixel."""
    return torch.nn.functional.one_hot(winner, 3).permute(2, 0, 1)[None].float() * 6


@pytest.mark.parametrize("loss", [DiceLoss(), FocalLoss(), HybridLoss()], ids=["dice", "focal", "hybrid"])
def test_predicting_a_class_the_case_leaves_out_costs_nothing_where_the_label_reads_background(loss):
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1  # liver contoured in the top half; spleen not contoured in this case
    right = target[0].clone()
    spleen_there = right.clone()
    spleen_there[2:, 2:] = 2  # "spleen" predicted where the label map reads 0
    labelled = torch.tensor([[True, True, False]])
    every = torch.ones(1, 3, dtype=torch.bool)
    marginal = loss(_logits(spleen_there), target, labelled)
    assert marginal == pytest.approx(float(loss(_logits(right), target, labelled)), abs=1e-6)
    plain = float(loss(_logits(spleen_there), target))
    assert float(loss(_logits(spleen_there), target, every)) == pytest.approx(plain)
    assert plain > float(marginal) + 0.01  # read as background, the spleen prediction is a mistake there
    liver_missed = spleen_there.clone()
    liver_missed[0, 0] = 0
    assert float(loss(_logits(liver_missed), target, labelled)) > float(marginal)  # contoured classes still count


def test_a_missing_class_found_in_the_labels_counts_as_contoured():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0] = 2
    wrong = _logits(torch.zeros(4, 4, dtype=torch.long))  # background everywhere: the spleen row is missed
    labelled = torch.tensor([[True, True, False]])
    assert float(FocalLoss()(wrong, target, labelled)) == pytest.approx(float(FocalLoss()(wrong, target)))


def test_predictions_of_a_missing_class_are_not_scored():
    pred = torch.tensor([[[2, 2], [1, 0]], [[2, 2], [1, 0]]])
    labelled = torch.tensor([[True, True, False], [True, True, True]])
    masked = mask_unlabelled(pred, labelled)
    assert masked[0].tolist() == [[0, 0], [1, 0]] and torch.equal(masked[1], pred[1])
    target = torch.tensor([[1, 0], [1, 0]], dtype=torch.uint8)  # no spleen in the labels
    slices = {i: (masked[i].numpy().astype(np.uint8), target.numpy()) for i in range(2)}
    volumes = [{"name": "a", "items": [0], "spacing": None}, {"name": "b", "items": [1], "spacing": None}]
    scores = volume_means(slices, volumes, CLASSES, "test")
    assert scores["test/volume_dice_spleen"] == 0.0  # only volume b, where spleen is contoured, is scored
    only_a = volume_means(slices, volumes[:1], CLASSES, "test")
    assert np.isnan(only_a["test/volume_dice_spleen"]) and only_a["test/volume_dice_liver"] == pytest.approx(2 / 3)


def test_a_missing_labels_file_naming_an_unknown_class_is_refused_naming_it(tmp_path):
    path = tmp_path / "missing_labels.json"
    path.write_text(json.dumps({"CASE_000": ["kidney"]}))
    with pytest.raises(ValueError, match=r"missing_labels\.json: case 'CASE_000' lists \['kidney'\]"):
        read_missing_labels(path, CLASSES)
    path.write_text(json.dumps({"CASE_000": ["background"]}))
    with pytest.raises(ValueError, match="not foreground classes"):
        read_missing_labels(path, CLASSES)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must map each case"):
        read_missing_labels(path, CLASSES)


def test_batches_in_memory_and_streamed_say_which_classes_each_case_contours(tmp_path):
    root = write_dataset(tmp_path / "d", cases=4)
    (root / "missing_labels.json").write_text(json.dumps({"CASE_001": ["spleen"], "CASE_002": []}))
    data = dict(layout="nnunet", class_names=CLASSES, image_size=16, split=[0.5, 0.25, 0.25], seed=0)
    dm = SegmentationDataModule(str(root), missing_labels="missing_labels.json", cache_dir=str(tmp_path), **data)
    dm.setup()
    expected = {s.patient: [True, True, s.patient != "CASE_001"] for s in dm.splits["train"] + dm.splits["val"]}
    for split in ("train", "val"):
        dataset = dm.dataset(split)
        got = {dm.splits[split][i].patient: dataset[i]["labelled"].tolist() for i in range(len(dataset))}
        assert got == {p: expected[p] for p in got}
    out = prepare(root, tmp_path / "prepared", missing_labels="missing_labels.json", **data)
    assert out["settings"]["missing_labels"] == "missing_labels.json"
    stream = StreamDataModule(str(tmp_path / "prepared"))
    stream.setup()
    streamed = [item["labelled"].tolist() for split in ("train", "val", "test") for item in stream.dataset(split)]
    assert sorted(streamed) == sorted([[True, True, True]] * 15 + [[True, True, False]] * 5)
