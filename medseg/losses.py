"""Segmentation losses: soft multi-class Dice, Focal, their hybrid, and inverse-frequency class weights.

Each takes an optional `labelled` [B, C] bool: the classes each sample's case contours. Where a class is not
contoured, the marginal loss (Shi et al., Medical Image Analysis 2021) merges it into background: the
probability of a background pixel is that of background or any class the case leaves out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _valid_onehot(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None):
    """Softmax probabilities, one-hot target and the valid-pixel mask [B, 1, H, W]."""
    num_classes = logits.shape[1]
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).to(logits.dtype)
    return logits.softmax(dim=1), onehot, valid.unsqueeze(1).to(logits.dtype)


def _missing(labelled: torch.Tensor | None, target: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """[B, C] bool: classes a sample's case leaves out (a class present in its target counts as contoured)."""
    if labelled is None or bool(labelled.all()):
        return None
    known = torch.where(target < num_classes, target, torch.zeros_like(target))  # ignore_index: not a class
    present = F.one_hot(known.flatten(1), num_classes).amax(1).bool()
    missing = ~labelled.to(target.device).bool() & ~present
    missing[:, 0] = False
    return missing if bool(missing.any()) else None


def merge_missing(probs: torch.Tensor, missing: torch.Tensor | None) -> torch.Tensor:
    """Probabilities [B, C, H, W] with each sample's MISSING classes added to background and zeroed."""
    if missing is None:
        return probs
    absent = missing[:, :, None, None].to(probs.dtype)
    merged = probs * (1 - absent)
    return torch.cat([merged[:, :1] + (probs * absent).sum(1, keepdim=True), merged[:, 1:]], dim=1)


class _WeightedLoss(nn.Module):
    """A per-pixel class loss with an ignored label value and optional class weights (a non-saved buffer)."""

    def __init__(self, ignore_index: int | None = 255, class_weights=None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", _as_tensor(class_weights), persistent=False)


class DiceLoss(_WeightedLoss):
    """1 - soft Dice per class over the batch, averaged over the classes present in the target."""

    def __init__(self, smooth: float = 1.0, ignore_index: int | None = 255, class_weights=None) -> None:
        super().__init__(ignore_index, class_weights)
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor | None = None) -> torch.Tensor:
        """Loss for [B, C, H, W] logits and [B, H, W] class indices (LABELLED: see the module)."""
        probs, onehot, valid = _valid_onehot(logits, target, self.ignore_index)
        probs = merge_missing(probs, _missing(labelled, target, logits.shape[1]))
        probs, onehot = probs * valid, onehot * valid
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        weights = self.class_weights if self.class_weights is not None else torch.ones_like(dice)
        weights = weights * (onehot.sum(dims) > 0)
        return ((1 - dice) * weights).sum() / weights.sum().clamp_min(1e-8)


class FocalLoss(_WeightedLoss):
    """Multi-class focal loss, mean over valid pixels; gamma 0 is (weighted) cross-entropy."""

    def __init__(self, gamma: float = 2.0, ignore_index: int | None = 255, class_weights=None) -> None:
        super().__init__(ignore_index, class_weights)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor | None = None) -> torch.Tensor:
        """Loss for [B, C, H, W] logits and [B, H, W] class indices (LABELLED: see the module)."""
        ignore = -100 if self.ignore_index is None else self.ignore_index
        logp = F.log_softmax(logits, dim=1)
        valid = target != ignore
        safe = torch.where(valid, target, torch.zeros_like(target))
        logpt = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
        missing = _missing(labelled, safe, logits.shape[1])
        if missing is not None:  # log P(background or a missing class) for background pixels
            missing[:, 0] = True
            background = logp.masked_fill(~missing[:, :, None, None], float("-inf")).logsumexp(1)
            logpt = torch.where(safe == 0, background, logpt)
        loss = -((1 - logpt.exp()) ** self.gamma) * logpt
        weight = valid.to(logits.dtype)
        if self.class_weights is not None:
            weight = weight * self.class_weights[safe]
        return (loss * weight).sum() / weight.sum().clamp_min(1e-8)


class HybridLoss(nn.Module):
    """alpha * Dice + (1 - alpha) * Focal."""

    def __init__(
        self,
        alpha: float = 0.7,
        gamma: float = 2.0,
        smooth: float = 1.0,
        ignore_index: int | None = 255,
        class_weights=None,
    ) -> None:
        super().__init__()
        self.alpha = alpha
        self.dice = DiceLoss(smooth, ignore_index, class_weights)
        self.focal = FocalLoss(gamma, ignore_index, class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted sum of the Dice and Focal terms."""
        dice, focal = self.dice(logits, target, labelled), self.focal(logits, target, labelled)
        return self.alpha * dice + (1 - self.alpha) * focal


def _as_tensor(weights) -> torch.Tensor | None:
    """Class weights as a float tensor, or None."""
    return None if weights is None else torch.as_tensor(list(weights), dtype=torch.float32)


def set_class_weights(loss: nn.Module, weights: torch.Tensor | None) -> None:
    """Set class weights on a loss and every loss inside it."""
    for module in loss.modules():
        if hasattr(module, "class_weights"):
            module.class_weights = None if weights is None else weights.float()  # type: ignore[assignment]


def inverse_frequency_weights(pixel_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Inverse-frequency class weights normalised to mean 1; absent classes get weight 0."""
    counts = torch.as_tensor(pixel_counts, dtype=torch.float64)
    weights = torch.where(counts > 0, counts.sum() / counts.clamp_min(1), torch.zeros_like(counts))
    present = (counts > 0).sum().clamp_min(1)
    return (weights * present / weights.sum()).float()
