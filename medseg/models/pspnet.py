"""PSPNet: timm encoder -> pyramid pooling -> 3x3 bottleneck -> classifier -> bilinear upsampling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from medseg.models.encoder import Encoder
from medseg.models.pyramid_pooling import PyramidPooling

# The network's trainable parts, in order; a stage of the schedule trains some or all of them.
PARTS = ("encoder", "decoder", "segmentation_head")


class PSPDecoder(nn.Module):
    """Pyramid pooling followed by the 3x3 bottleneck with BatchNorm, ReLU and Dropout2d."""

    def __init__(self, in_channels: int, bins: Sequence[int], channels: int, dropout: float) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels, bins)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(self.ppm.out_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Context-enriched features."""
        return self.bottleneck(self.ppm(x))


class PSPNet(nn.Module):
    """Pyramid Scene Parsing Network with a timm encoder; logits at the input resolution.

    Args:
        encoder_name: a key of `medseg.models.encoder.BACKBONES` (mobilenetv3, efficientnet_b0, ...).
        in_channels: input channels (1 for grey-scale DICOM; 3 for RGB).
        num_classes: output classes, background included.
        bins: pyramid pooling grid sizes, or a string such as "1-3-5-7".
        output_stride: 8, 16 or 32; the last encoder stages are dilated instead of strided below 32.
        encoder_depth: use only the encoder's first k stages (as smp does; 3 = stride 8): far cheaper
            epochs; None keeps the whole encoder.
        decoder_channels: channels of the pyramid branches and the 3x3 bottleneck.
        dropout: dropout before the classifier.
        pretrained: ask the Hugging Face hub for ImageNet weights (fails offline with a clear message).
        weights_path: a local timm weights file (.safetensors or .pth state dict) for the encoder.
        grad_checkpointing: recompute activations in backward to save memory.
    """

    def __init__(
        self,
        encoder_name: str = "mobilenetv3",
        in_channels: int = 1,
        num_classes: int = 2,
        bins: Sequence[int] | str = (1, 3, 5, 7),
        output_stride: int = 8,
        encoder_depth: int | None = None,
        decoder_channels: int = 256,
        dropout: float = 0.2,
        pretrained: bool = False,
        weights_path: str | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(bins, str):  # "1-3-5-7", as sweepers pass choices
            bins = [int(b) for b in bins.replace(",", "-").split("-") if b.strip().isdigit()]
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a number in [0, 1), got {dropout!r}")
        if not bins or any(b < 1 for b in bins):
            raise ValueError(f"bins: expected positive pooling grid sizes, got {bins!r}")
        if decoder_channels < 1 or num_classes < 2:
            raise ValueError(
                f"decoder_channels and num_classes must be >= 1 and >= 2, got {decoder_channels}, {num_classes}"
            )
        self.encoder = Encoder(encoder_name, in_channels, output_stride, pretrained, weights_path, encoder_depth)
        self.decoder = PSPDecoder(self.encoder.out_channels, tuple(bins), decoder_channels, dropout)
        self.segmentation_head = nn.Conv2d(decoder_channels, num_classes, 1)
        self.grad_checkpointing = grad_checkpointing
        if grad_checkpointing:  # recompute activations in backward: far less memory, ~30% more time
            self.encoder.body.set_grad_checkpointing(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] images -> [B, num_classes, H, W] logits."""
        features = self.encoder(x)
        if self.grad_checkpointing and self.training and features.requires_grad:
            context = checkpoint(self.decoder, features, use_reentrant=False)
        else:
            context = self.decoder(features)
        logits = self.segmentation_head(context)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
