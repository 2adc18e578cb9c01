"""Test-time views by name (flips, scales): which exist, and which a model runs; no torch needed."""

from __future__ import annotations

import re
from collections.abc import Sequence

# Test-time flips: the image dimensions each one flips.
TTA_FLIPS: dict[str, tuple[int, ...]] = {"hflip": (-1,), "vflip": (-2,), "hvflip": (-2, -1)}
# Test-time rescaling: "scale1.25" runs the network on the input resized by 1.25 (bilinear) and resizes the
# logits back; factors in (0, 4], other than 1.
TTA_SCALE = re.compile(r"scale(\d+(?:\.\d+)?)")


def scale_factor(name: str) -> float | None:
    """The factor of a scale view's name; None when the name is not a valid one."""
    match = TTA_SCALE.fullmatch(name)
    factor = float(match.group(1)) if match else 0.0
    return factor if 0 < factor <= 4 and factor != 1 else None


def check_tta(tta: Sequence[str]) -> list[str]:
    """The TTA names as a list; raise on an unknown one."""
    unknown = [name for name in tta if name not in TTA_FLIPS and scale_factor(name) is None]
    if unknown:
        raise ValueError(
            f"unknown test-time augmentation {unknown}; choose from {sorted(TTA_FLIPS)} or scale<factor> "
            "(a factor in (0, 4] other than 1, e.g. scale1.25)"
        )
    return list(tta)


def resolve_tta(model: Sequence[str], requested: Sequence[str] | None, baked: Sequence[str] | None = None) -> list[str]:
    """The views a model runs: REQUESTED when given, else the MODEL's own; for an ONNX graph, whose views are
    BAKED into it, a request for other views is a contradiction and refused."""
    views = check_tta(model if requested is None else requested)
    if baked is not None and views != list(baked):
        raise ValueError(
            f"the ONNX graph averages {list(baked) or 'no'} test-time views, not {views or 'none'}; "
            "export it again with medseg-export --tta ..."
        )
    return views
