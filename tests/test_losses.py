"""Dice, Focal and hybrid losses against hand-computed values and cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medseg.losses import DiceLoss, FocalLoss, HybridLoss, inverse_frequency_weights


def test_dice_is_zero_for_a_perfect_prediction():
    target = torch.randint(0, 3, (2, 16, 16))
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert DiceLoss(smooth=0.0)(logits, target).item() < 1e-6


def test_dice_hand_computed_case():
    # 1x2 image, two classes; probabilities p(class1) = [0.8, 0.4], target = [1, 0].
    p1 = torch.tensor([0.8, 0.4])
    logits = torch.stack([torch.zeros(2), torch.log(p1 / (1 - p1))]).reshape(1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    # class 0: probs [0.2, 0.6], onehot [0, 1] -> 2*0.6/(0.8+1)
    # class 1: probs [0.8, 0.4], onehot [1, 0] -> 2*0.8/(1.2+1)
    dice0, dice1 = 1.2 / 1.8, 1.6 / 2.2
    expected = 1 - (dice0 + dice1) / 2
    torch.testing.assert_close(DiceLoss(smooth=0.0)(logits, target), torch.tensor(expected))


def test_dice_ignores_ignore_index():
    target = torch.tensor([[[1, 255]]])
    logits = torch.tensor([[[[-9.0, 9.0]], [[9.0, -9.0]]]])
    assert DiceLoss(smooth=0.0)(logits, target).item() < 1e-3


def test_focal_gamma_zero_equals_cross_entropy():
    logits = torch.randn(3, 4, 9, 7)
    target = torch.randint(0, 4, (3, 9, 7))
    target[0, 0, :3] = 255
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, target), F.cross_entropy(logits, target, ignore_index=255))
    weights = torch.tensor([0.5, 1.0, 2.0, 1.5])
    torch.testing.assert_close(
        FocalLoss(gamma=0.0, class_weights=weights)(logits, target),
        F.cross_entropy(logits, target, weight=weights, ignore_index=255),
    )
    assert FocalLoss(gamma=2.0)(logits, target) < FocalLoss(gamma=0.0)(logits, target)


def test_hybrid_is_weighted_sum():
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    hybrid = HybridLoss(alpha=0.7, gamma=2.0)(logits, target)
    expected = 0.7 * DiceLoss()(logits, target) + 0.3 * FocalLoss(gamma=2.0)(logits, target)
    torch.testing.assert_close(hybrid, expected)


def test_inverse_frequency_weights():
    weights = inverse_frequency_weights([900, 90, 10, 0])
    # inverse frequencies 1000/900, 1000/90, 1000/10, normalised to mean 1 over present classes
    raw = torch.tensor([1000 / 900, 1000 / 90, 1000 / 10])
    torch.testing.assert_close(weights[:3], raw * 3 / raw.sum())
    assert weights[3] == 0
