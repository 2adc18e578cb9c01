"""Pyramid pooling module with adaptive pooling computed from the runtime shape (ONNX-exportable)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _bin_matrix(size: int, bins: int, device, dtype) -> torch.Tensor:
    """[bins, size] averaging matrix with the same bin edges as nn.AdaptiveAvgPool."""
    idx = torch.arange(size, device=device)
    b = torch.arange(bins, device=device)
    start = torch.div(b * size, bins, rounding_mode="floor")
    end = torch.div((b + 1) * size + bins - 1, bins, rounding_mode="floor")
    member = (idx[None, :] >= start[:, None]) & (idx[None, :] < end[:, None])
    member = member.to(dtype)
    return member / member.sum(dim=1, keepdim=True)


def adaptive_avg_pool2d(x: torch.Tensor, bins: int) -> torch.Tensor:
    """Adaptive average pooling to bins x bins as two matrix products; equals F.adaptive_avg_pool2d."""
    rows = _bin_matrix(x.shape[-2], bins, x.device, x.dtype)
    cols = _bin_matrix(x.shape[-1], bins, x.device, x.dtype)
    return rows @ x @ cols.transpose(0, 1)


class PoolBranch(nn.Module):
    """Pool to bins x bins, project with 1x1 conv + BN + ReLU, upsample back."""

    def __init__(self, in_channels: int, out_channels: int, bins: int) -> None:
        super().__init__()
        self.bins = bins
        self.project = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, projected and upsampled context at this bin size."""
        y = self.project(adaptive_avg_pool2d(x, self.bins))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """Concatenate the input with its context pooled at several bin sizes."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 3, 5, 7)) -> None:
        super().__init__()
        branch = max(in_channels // len(bins), 8)
        self.branches = nn.ModuleList(PoolBranch(in_channels, branch, b) for b in bins)
        self.out_channels = in_channels + branch * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features concatenated with every pyramid level."""
        return torch.cat([x, *(branch(x) for branch in self.branches)], dim=1)
