"""The one scoring loop: whole-split Dice and IoU per class (torchmetrics), the same for the test step,
medseg-eval, the INT8 Dice gate and the benchmarks; and per-case Dice, IoU and HD95 (MONAI) for medseg-eval.

Empty-mask convention per case (as nnU-Net and MONAI): empty reference and empty prediction -> NaN, left out of
means; one of them empty -> Dice 0, IoU 0, HD95 NaN. Over a split, a class absent from both is NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.functional.segmentation import dice_score, mean_iou
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


def foreground_scores(values: Mapping[str, torch.Tensor], class_names: Sequence[str], prefix: str = "") -> dict:
    """`{prefix}dice_<class>`, `{prefix}dice_mean` (and IoU) of computed split metrics, foreground classes only."""
    scores = {}
    for name in ("dice", "iou"):
        per_class = values[f"{prefix}{name}"].reshape(-1)[-(len(class_names) - 1) :]  # foreground
        for cls, value in zip(class_names[1:], per_class, strict=True):
            scores[f"{prefix}{name}_{cls}"] = value
        scores[f"{prefix}{name}_mean"] = per_class.nanmean()
    return scores


class SplitScores:
    """Whole-split scores of class-index masks fed one batch at a time (numpy or torch)."""

    def __init__(self, class_names: Sequence[str], ignore_index: int = 255) -> None:
        self.class_names, self.ignore_index = list(class_names), ignore_index
        self.metrics = segmentation_metrics(len(self.class_names))

    def update(self, pred, target) -> None:
        """Add masks [B, H, W] (or one [H, W]) of predicted and reference class indices."""
        pred, target = (torch.as_tensor(np.asarray(t)).long() for t in (pred, target))
        if pred.ndim == 2:
            pred, target = pred[None], target[None]
        update_ignoring(self.metrics, pred, target, self.ignore_index)

    def compute(self) -> dict[str, float]:
        """{dice_<class>, dice_mean, iou_<class>, iou_mean} over everything added."""
        return {k: float(v) for k, v in foreground_scores(self.metrics.compute(), self.class_names).items()}


def _surface_scores(onehot: list[torch.Tensor], both: torch.Tensor, spacing, nsd_tolerance: float | None):
    """HD95 and NSD (with NSD_TOLERANCE) of the classes in BOTH masks, NaN elsewhere. MONAI is given those
    classes only: it warns about, and returns inf or NaN for, empty ones, which the empty-mask convention scores."""
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    hd95, nsd = torch.full(both.shape, float("nan")), torch.full(both.shape, float("nan"))
    if not both.any():
        return hd95, nsd
    present = [0, *(torch.nonzero(both).flatten() + 1).tolist()]
    pred, ref = onehot[0][:, present], onehot[1][:, present]
    hd95[both] = compute_hausdorff_distance(pred, ref, include_background=False, percentile=95, spacing=spacing)[0]
    if nsd_tolerance is not None:
        thresholds = [float(nsd_tolerance)] * int(both.sum())
        nsd[both] = compute_surface_dice(pred, ref, thresholds, include_background=False, spacing=spacing)[0].float()
    return hd95, nsd


def case_scores(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    spacing=None,
    nsd_tolerance: float | None = None,
    ignore_index: int = 255,
) -> dict[str, np.ndarray]:
    """Per-foreground-class Dice, IoU and HD95 of one 2-D or 3-D case (MONAI's surface distances, in mm along
    SPACING, the first axis first), with the empty-mask convention applied; with NSD_TOLERANCE (mm) also the
    normalised surface distance `nsd`, and the predicted and true volumes `volume_pred`, `volume_true` (mL
    where SPACING is in mm). Pixels at IGNORE_INDEX in TARGET count as background in both."""
    ignored = target == ignore_index
    pred, target = np.where(ignored, 0, pred), np.where(ignored, 0, target)
    p, t = torch.from_numpy(pred.astype(np.int64))[None], torch.from_numpy(target.astype(np.int64))[None]
    dice = dice_score(p, t, num_classes, include_background=False, average="none", input_format="index")[0]
    iou = mean_iou(p, t, num_classes, include_background=False, per_class=True, input_format="index")[0]
    onehot = [F.one_hot(x, num_classes).movedim(-1, 1).float() for x in (p, t)]
    axes = tuple(range(1, pred.ndim + 1))
    counts = [x[0, 1:].sum(axes) for x in onehot]
    pred_empty, ref_empty = counts[0] == 0, counts[1] == 0
    hd95, nsd = _surface_scores(onehot, ~ref_empty & ~pred_empty, spacing, nsd_tolerance)
    dice, iou = dice.float().clone(), iou.float().clone()
    neither = ref_empty & pred_empty
    dice[neither], iou[neither] = float("nan"), float("nan")
    one = ref_empty ^ pred_empty
    dice[one], iou[one] = 0.0, 0.0
    scores = {"dice": dice.numpy(), "iou": iou.numpy(), "hd95": hd95.numpy()}
    if nsd_tolerance is not None:
        nsd[one] = 0.0
        voxel_ml = float(np.prod(spacing)) / 1000.0 if spacing is not None else 1.0
        scores |= {"nsd": nsd.numpy(), "volume_pred": counts[0].numpy() * voxel_ml}
        scores["volume_true"] = counts[1].numpy() * voxel_ml
    return scores
