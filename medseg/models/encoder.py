"""timm feature encoders: short backbone names, output stride, offline-safe weight loading."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

BACKBONES: dict[str, str] = {
    "mobilenetv3": "mobilenetv3_large_100",
    "efficientnet_b0": "efficientnet_b0",
    "resnet18": "resnet18",
    "convnext_tiny": "convnext_tiny",
}


class Encoder(nn.Module):
    """The last feature map of a timm backbone at a chosen output stride."""

    def __init__(
        self,
        name: str,
        in_channels: int = 1,
        output_stride: int = 8,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        timm_name = BACKBONES.get(name, name)
        kwargs = dict(features_only=True, out_indices=(-1,), in_chans=in_channels, output_stride=output_stride)
        if weights_path is not None:
            path = Path(weights_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"encoder weights file not found: {path}")
            self.body = timm.create_model(
                timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs
            )
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
        self.out_channels: int = self.body.feature_info.channels()[-1]
        self.output_stride: int = self.body.feature_info.reduction()[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the deepest feature map."""
        return self.body(x)[-1]
