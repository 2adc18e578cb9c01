"""Slices grouped back into volumes for scoring: the series' slices stacked in order, with their spacing."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medseg.data.dicom import SliceMeta
from medseg.data.geometry import slice_position, slice_step
from medseg.data.index import Sample
from medseg.evaluation.scores import case_scores
from medseg.utils.privacy import pseudonym


@dataclass
class Scored:
    """One decoded, predicted slice: what scoring and the worst-case overlays need."""

    sample: Sample
    meta: SliceMeta | None
    image: np.ndarray
    target: np.ndarray
    pred: np.ndarray


@dataclass
class Case:
    """What is scored as one case: a volume (a series' slices in order) or one 2-D image."""

    name: str
    slices: list[Scored]
    spacing: tuple[float, ...] | None  # mm: (slice, row, column) for a volume, (row, column) for an image

    @property
    def is_volume(self) -> bool:
        """Whether the case is a stack of slices."""
        return len(self.slices) > 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(prediction, reference): [D, H, W] for a volume, [H, W] for an image."""
        if not self.is_volume:
            return self.slices[0].pred, self.slices[0].target
        return np.stack([s.pred for s in self.slices]), np.stack([s.target for s in self.slices])


def slice_spacing(metas: Sequence[SliceMeta | None]) -> float | None:
    """The median step between consecutive slices along the normal, in mm; None without geometry."""
    if any(m is None or m.position is None or m.orientation is None for m in metas) or len(metas) < 2:
        return None
    return slice_step([slice_position(m.position, m.orientation) for m in metas])  # type: ignore[union-attr]


def group_cases(scored: Sequence[Scored], names: Sequence[str], per_slice: bool = False) -> list[Case]:
    """Cases to score: one per series (slices in their order along the normal, named by the series' keyed
    pseudonym) unless PER_SLICE, and one per 2-D image or slice, named by NAMES."""
    cases: list[Case] = []
    volumes: dict[str, list[tuple[Scored, str]]] = {}
    for item, name in zip(scored, names, strict=True):
        if per_slice or not item.sample.series:
            plane = item.meta.pixel_spacing if item.meta is not None else None
            cases.append(Case(name, [item], tuple(plane) if plane else None))
        else:
            volumes.setdefault(item.sample.series, []).append((item, name))
    for items in volumes.values():
        items.sort(key=lambda pair: pair[0].sample.slice_index)
        slices = [item for item, _ in items]
        step, first = slice_spacing([s.meta for s in slices]), slices[0].meta
        in_plane = first.pixel_spacing if first is not None else None
        spacing = (step, *in_plane) if step and in_plane else None
        cases.append(Case(pseudonym(slices[0].sample.series), slices, spacing))
    return cases


def volume_means(
    slices: dict[int, tuple[np.ndarray, np.ndarray]],
    volumes: Sequence[dict],
    class_names: Sequence[str],
    prefix: str,
    nsd_tolerance: float = 2.0,
) -> dict[str, float]:
    """Mean over VOLUMES (split_volumes' records) of per-volume Dice, HD95 and NSD per foreground class and their
    mean, from SLICES (item -> (prediction, reference)); named PREFIX/volume_<metric>_<class>. Volumes missing
    from SLICES (dropped items) are scored on the slices present; HD95 and NSD in mm where the spacing is known."""
    per_metric: dict[str, list[np.ndarray]] = {m: [] for m in ("dice", "hd95", "nsd")}
    for volume in volumes:
        present = [slices[i] for i in volume["items"] if i in slices]
        if not present:
            continue
        pred, target = (np.stack(arrays) for arrays in zip(*present, strict=True))
        scores = case_scores(pred, target, len(class_names), volume["spacing"], nsd_tolerance)
        for metric, values in per_metric.items():
            values.append(scores[metric])
    out: dict[str, float] = {}
    for metric, values in per_metric.items():
        if not values:
            continue
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from every volume: NaN
            means = np.nanmean(np.stack(values), axis=0)
        out |= {f"{prefix}/volume_{metric}_{cls}": float(v) for cls, v in zip(class_names[1:], means, strict=True)}
        out[f"{prefix}/volume_{metric}_mean"] = float(np.nanmean(means)) if np.isfinite(means).any() else float("nan")
    return out
