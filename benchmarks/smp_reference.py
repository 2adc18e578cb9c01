"""segmentation_models_pytorch's PSPNet on medseg's timm encoders: the reference in the benchmarks (benchmark-only)."""

from __future__ import annotations

from medseg.models.encoder import BACKBONES


def smp_pspnet(encoder_name: str, in_channels: int = 1, num_classes: int = 2, **smp_kwargs):
    """smp.PSPNet on the same timm encoder ('tu-' prefix), random weights, smp's defaults unless given."""
    import segmentation_models_pytorch as smp

    return smp.PSPNet(
        encoder_name=f"tu-{BACKBONES.get(encoder_name, encoder_name)}",
        encoder_weights=None,
        in_channels=in_channels,
        classes=num_classes,
        **smp_kwargs,
    )
