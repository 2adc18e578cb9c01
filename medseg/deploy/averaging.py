"""Inference-time averaging in PyTorch: test-time views (logits averaged) and checkpoint ensembles (softmax)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.deploy.views import TTA_FLIPS, check_tta, scale_factor


def view_logits(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, name: str) -> torch.Tensor:
    """NET's logits for one test-time view of X, mapped back onto X's pixels."""
    if name in TTA_FLIPS:
        dims = TTA_FLIPS[name]
        return net(x.flip(dims)).flip(dims)
    scaled = F.interpolate(x, scale_factor=scale_factor(name), mode="bilinear", align_corners=False)
    return F.interpolate(net(scaled), size=x.shape[-2:], mode="bilinear", align_corners=False)


def tta_logits(
    net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tta: Sequence[str], plain: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of NET's logits over the plain input (PLAIN, when already computed) and each test-time view of it.

    One pass per view: a batch made of the views would fix the batch size of an exported ONNX graph."""
    logits = net(x) if plain is None else plain
    for name in tta:
        logits = logits + view_logits(net, x, name)
    return logits / (1 + len(tta))


class TestTimeAugmented(nn.Module):
    """A network whose output is the mean of its logits over test-time views of the input (flips, scales)."""

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
