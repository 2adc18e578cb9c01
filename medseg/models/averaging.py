"""Inference-time averaging: test-time flips (logits averaged) and checkpoint ensembles (softmax averaged)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

# Test-time augmentations: the image dimensions each one flips.
TTA_FLIPS: dict[str, tuple[int, ...]] = {"hflip": (-1,), "vflip": (-2,), "hvflip": (-2, -1)}


def check_tta(tta: Sequence[str]) -> list[str]:
    """The TTA names as a list; raise on an unknown one."""
    unknown = [name for name in tta if name not in TTA_FLIPS]
    if unknown:
        raise ValueError(f"unknown test-time augmentation {unknown}; choose from {sorted(TTA_FLIPS)}")
    return list(tta)


def tta_logits(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tta: Sequence[str]) -> torch.Tensor:
    """Mean of NET's logits over the plain input and each flipped input (flipped back).

    One pass per view: a batch made of the views would fix the batch size of an exported ONNX graph."""
    logits = net(x)
    for name in tta:
        dims = TTA_FLIPS[name]
        logits = logits + net(x.flip(dims)).flip(dims)
    return logits / (1 + len(tta))


class TestTimeAugmented(nn.Module):
    """A network whose output is the mean of its logits over flips of the input."""

    __test__ = False  # a model, not a pytest test class

    def __init__(self, net: nn.Module, tta: Sequence[str]) -> None:
        super().__init__()
        self.net, self.tta = net, check_tta(tta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Averaged logits [B, K, H, W]."""
        return tta_logits(self.net, x, self.tta)


class Ensemble(nn.Module):
    """Members' softmax averaged; returns its logarithm, so softmax and argmax of the output are the ensemble's."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the mean class probabilities [B, K, H, W]."""
        probs = torch.stack([member(x).softmax(1) for member in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()


def inference_net(members: Sequence[nn.Module], tta: Sequence[str] = ()) -> nn.Module:
    """One network for inference: each member with TTA, several members ensembled."""
    nets = [TestTimeAugmented(m, tta) if tta else m for m in members]
    return nets[0] if len(nets) == 1 else Ensemble(nets)
