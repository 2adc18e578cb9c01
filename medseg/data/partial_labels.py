"""Partly labelled cases: the classes a case's label map does not contour, read as "unknown", not background.

A JSON file maps each case (an nnU-Net case name or a patient) to the class names its contours leave out:

    {"HNCT_001": ["Esophagus", "Larynx"], "HNCT_004": []}

Their voxels read 0 in the label map. Training uses the marginal loss (medseg.losses: background and the
case's missing classes are one class there) and scoring counts a prediction of a missing class as background, so
the empty-reference convention leaves that (case, class) out of the per-case means.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from medseg.data.index import Sample


def read_missing_labels(path: str | Path, class_names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Case -> indices of the classes it leaves out, from a JSON file of case -> class names (background never)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON file of case -> missing class names ({exc})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise ValueError(f"{path}: must map each case to a list of class names")
    index = {name: i for i, name in enumerate(class_names)}
    missing = {}
    for case, names in raw.items():
        unknown = [n for n in names if n not in index or index[n] == 0]
        if unknown:
            raise ValueError(f"{path}: case {case!r} lists {unknown}, not foreground classes of {list(class_names)}")
        missing[str(case)] = tuple(sorted(index[n] for n in names))
    return missing


def mark_missing(samples: Sequence[Sample], missing: Mapping[str, tuple[int, ...]]) -> list[Sample]:
    """SAMPLES with `unlabelled` set from MISSING, looked up by the sample's series (volume), then its patient."""
    out = []
    for s in samples:
        classes = missing.get(s.series, missing.get(s.patient, ()))
        out.append(replace(s, unlabelled=classes) if classes else s)
    return out


def labelled_vector(unlabelled: Sequence[int], num_classes: int) -> np.ndarray:
    """[num_classes] bool: True for the classes the case contours (background always)."""
    labelled = np.ones(num_classes, dtype=bool)
    labelled[list(unlabelled)] = False
    return labelled


def mask_unlabelled(pred: torch.Tensor, labelled: torch.Tensor | None) -> torch.Tensor:
    """Class-index predictions [B, ...] with the classes each sample leaves out (LABELLED [B, C] False) set to 0."""
    if labelled is None or bool(labelled.all()):
        return pred
    rows = torch.arange(len(pred), device=pred.device).view(-1, *([1] * (pred.ndim - 1)))
    return pred.masked_fill(~labelled.to(pred.device)[rows, pred], 0)
