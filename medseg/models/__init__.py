"""PSPNet segmentation models on timm encoders."""

from medseg.models.pspnet import PARTS, PSPNet

__all__ = ["PARTS", "PSPNet"]
