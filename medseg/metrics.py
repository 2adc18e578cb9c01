"""Segmentation metrics shared by training, export checks and evaluation (torchmetrics)."""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.segmentation import DiceScore


def segmentation_metrics(num_classes: int, prefix: str = "") -> MetricCollection:
    """Dataset-level (global) per-class Dice without background, and per-class IoU with background first."""
    return MetricCollection(
        dict(
            dice=DiceScore(
                num_classes, include_background=False, average="none", aggregation_level="global", input_format="index"
            ),
            # a class absent from both prediction and reference is NaN (left out of means), as for Dice
            iou=MulticlassJaccardIndex(num_classes, average="none", zero_division=float("nan")),
        ),
        prefix=prefix,
    )


def update_ignoring(
    metric: Metric | MetricCollection, pred: torch.Tensor, target: torch.Tensor, ignore_index: int = 255
):
    """Update with class-index tensors; ignored pixels count as background in both, so foreground scores skip them."""
    ignored = target == ignore_index
    metric.update(pred.masked_fill(ignored, 0), target.masked_fill(ignored, 0))
