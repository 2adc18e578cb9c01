"""PSPNet segmentation models on timm encoders."""

from medseg.models.pspnet import PSPNet

__all__ = ["PSPNet"]
