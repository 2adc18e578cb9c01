"""What a model needs from its consumer, stored in the ONNX file's metadata and derived from checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from medseg.data.intensity import Z_RANGE

METADATA_KEY = "medseg"


@dataclass(frozen=True)
class ModelInfo:
    """Everything a consumer needs to feed the model: classes, channels per slice, context slices, size policy,
    window and intensity normalisation."""

    class_names: list[str]
    in_channels: int
    image_size: list[int]
    size_policy: str = "stretch"
    window: str | list[float] | None = None
    input: str = (
        "float32 [B, C, H, W] in [0, 1]: modality LUT, then the VOI window (MONOCHROME1 inverted), or with "
        f"normalize ct/zscore the clipped z-score z as (z + {Z_RANGE:g}) / {2 * Z_RANGE:g}"
    )
    output: str = "float32 logits [B, K, H, W]; argmax over K gives class indices"
    tta: list[str] = field(default_factory=list)  # test-time views (ONNX: averaged inside the graph)
    keep_largest: dict[str, int] | None = None  # post-processing: largest components kept per class
    members: int = 1  # checkpoints ensembled (softmax averaged; the output is then its logarithm)
    spacing: list[float] | None = None  # [row_mm, col_mm] inputs are resampled to; masks map back to the source
    context_slices: int = 0  # k: the input stacks slices z-k..z+k of a series, in_channels each (2.5-D)
    normalize: str = "window"  # intensity scheme (medseg.data.intensity): window, ct, zscore or auto
    ct_statistics: dict[str, float] | None = None  # ct: clip range and z-score of the training foreground

    @property
    def input_channels(self) -> int:
        """Channels of the network's input: each slice's channels times the 2k+1 slices of a context stack."""
        return self.in_channels * (2 * self.context_slices + 1)

    def to_json(self) -> str:
        """Serialise for ONNX metadata."""
        return json.dumps(asdict(self))
