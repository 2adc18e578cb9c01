"""medseg: PSPNet medical image segmentation with PyTorch Lightning and Hydra."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medseg")  # one source: pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
