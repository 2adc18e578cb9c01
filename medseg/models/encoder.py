"""timm feature encoders: short backbone names, output stride, offline-safe weight loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from medseg.utils.cli import first_line

BACKBONES: dict[str, str] = {
    "mobilenetv3": "mobilenetv3_large_100",
    "efficientnet_b0": "efficientnet_b0",
    "resnet18": "resnet18",
    "convnext_tiny": "convnext_tiny",
}


class Encoder(nn.Module):
    """The last feature map of a timm backbone at a chosen output stride, optionally of its first DEPTH stages."""

    def __init__(
        self,
        name: str,
        in_channels: int = 1,
        output_stride: int = 8,
        pretrained: bool = False,
        weights_path: str | None = None,
        depth: int | None = None,
    ) -> None:
        super().__init__()
        timm_name = BACKBONES.get(name, name)
        index = -1 if depth is None else depth - 1
        if depth is not None and depth < 1:
            raise ValueError(f"encoder_depth must be at least 1, got {depth}")
        kwargs: dict[str, Any] = dict(
            features_only=True, out_indices=(index,), in_chans=in_channels, output_stride=output_stride
        )
        if weights_path is not None:
            path = Path(weights_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"encoder weights file not found: {path}")
            try:
                self.body = timm.create_model(
                    timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs
                )
            except Exception as exc:  # a pickle, another network's weights, a truncated file
                problem = f"not readable encoder weights for {timm_name} ({type(exc).__name__}: {first_line(exc)})"
                raise ValueError(f"{path}: {problem}") from None
        elif pretrained:
            try:
                self.body = timm.create_model(timm_name, pretrained=True, **kwargs)
            except Exception as exc:
                raise RuntimeError(
                    f"pretrained weights for {timm_name!r} must come from the Hugging Face hub, which "
                    f"could not be reached ({type(exc).__name__}). Download the weights on a connected "
                    "machine and pass model.net.weights_path=/path/to/weights.safetensors instead."
                ) from exc
        else:
            self.body = timm.create_model(timm_name, pretrained=False, **kwargs)
        if depth is not None:
            _drop_unused_blocks(self.body)
        self.out_channels: int = self.body.feature_info.channels()[-1]
        self.depth: int = depth or len(self.body.feature_info)  # type: ignore[arg-type]  # stages used
        self.output_stride: int = self.body.feature_info.reduction()[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the deepest feature map."""
        return self.body(x)[-1]


def _drop_unused_blocks(body: nn.Module) -> None:
    """Remove the stages after the last returned feature (timm's MobileNetV3/EfficientNet feature
    classes build every stage whatever the out_indices; its FeatureListNet already stops there)."""
    blocks = getattr(body, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        return
    last = body.feature_info.module_name()[-1]  # e.g. "blocks.2"
    if last.startswith("blocks."):
        body.blocks = blocks[: int(last.split(".")[1]) + 1]
