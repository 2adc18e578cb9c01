"""Intensities per modality: the VOI window, CT clipped and z-scored with dataset statistics, MR z-scored per series.

Schemes (`data.normalize`):
- window: the file's VOI window, a preset or [center, width], else the slice's 0.5-99.5 percentile range.
- ct: clip to the window preset given, else to the 0.5/99.5 percentiles of the training split's foreground
  voxels; z-score with the mean and std of those voxels (nnU-Net's CT scheme). Stored with the model.
- zscore: per series, clip to its 0.5/99.5 percentiles and z-score with its own mean and std (MR).
- auto: by Modality: CT -> ct; MR, and NIfTI channels other than CT (nnU-Net's rule) -> zscore; else window.

Every scheme hands the network values in [0, 1]: a z-score z becomes (z + Z_RANGE) / (2 Z_RANGE), clipped,
so augmentation, uint8 storage and the exported model's input contract stay as for windowed images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from medseg.data.dicom import WINDOW_PRESETS

SCHEMES = ("window", "ct", "zscore", "auto")
Z_RANGE = 6.0  # z-scores in [-6, 6] span the input range [0, 1]
PERCENTILES = (0.5, 99.5)
MAX_VALUES = 1_000_000  # voxels a statistic is computed from (a uniform sample beyond that)
MAX_SLICES = 500  # training slices sampled for the CT foreground statistics
FOREGROUND_PER_SLICE = 10_000  # foreground voxels sampled per slice


@dataclass(frozen=True)
class Statistics:
    """Clip range and z-score parameters of one scheme's intensities."""

    low: float
    high: float
    mean: float
    std: float


def scheme_for(normalize: str, modality: str, kind: str) -> str:
    """The scheme a sample of MODALITY (and sample KIND: dicom, nifti, image) gets under NORMALIZE."""
    if normalize != "auto":
        return normalize
    if modality.upper() == "CT":
        return "ct"
    return "zscore" if modality.upper() == "MR" or kind == "nifti" else "window"


def zscored(values: np.ndarray, stats: Statistics) -> np.ndarray:
    """VALUES clipped to the statistics' range, z-scored, and mapped onto [0, 1] (float32)."""
    z = (np.clip(values, stats.low, stats.high) - stats.mean) / stats.std
    return np.clip((z + Z_RANGE) / (2 * Z_RANGE), 0.0, 1.0).astype(np.float32)


def _sample(values: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most LIMIT of VALUES (1-D), drawn uniformly without replacement."""
    return values if values.size <= limit else rng.choice(values, limit, replace=False)


def _statistics(values: np.ndarray, clip: tuple[float, float] | None = None) -> Statistics:
    """Clip range (CLIP, else the percentiles of VALUES) and mean/std of VALUES clipped to it."""
    low, high = clip if clip is not None else (float(v) for v in np.percentile(values, PERCENTILES))
    clipped = np.clip(values, low, high)
    std = float(clipped.std())
    return Statistics(float(low), float(high), float(clipped.mean()), std if std > 1e-6 else 1.0)


def series_statistics(slices: Iterable[np.ndarray]) -> Statistics:
    """The zscore statistics of one series from its slices' raw values."""
    values = np.concatenate([np.asarray(s, np.float64).ravel() for s in slices])
    values = values[np.isfinite(values)]
    if not values.size:  # nothing readable: the decoding step refuses the slices, naming them
        return Statistics(0.0, 0.0, 0.0, 1.0)
    return _statistics(_sample(values, MAX_VALUES, np.random.default_rng(0)))


def window_range(window) -> tuple[float, float] | None:
    """(low, high) of a window preset or [center, width]; None for no window."""
    if window is None:
        return None
    center, width = WINDOW_PRESETS[window] if isinstance(window, str) else (float(v) for v in window)
    return center - width / 2, center + width / 2


def foreground_statistics(pairs: Iterable[tuple[np.ndarray, np.ndarray]], window=None) -> Statistics:
    """The ct statistics from (raw values, foreground mask) pairs of training slices; WINDOW fixes the clip."""
    rng = np.random.default_rng(0)
    parts = [_sample(values[mask & np.isfinite(values)], FOREGROUND_PER_SLICE, rng) for values, mask in pairs]
    values = np.concatenate(parts) if parts else np.zeros(0)
    if not values.size:
        raise ValueError("data.normalize=ct: the training labels hold no foreground voxel to take statistics from")
    return _statistics(values.astype(np.float64), window_range(window))


@dataclass(frozen=True)
class Intensity:
    """How raw values become model input: the scheme, the CT statistics, and the per-series zscore statistics."""

    normalize: str = "window"
    ct: Statistics | None = None
    series: Mapping[str, Statistics] = field(default_factory=dict)

    def scheme(self, modality: str, kind: str) -> str:
        """The scheme of an input of MODALITY and KIND; a NIfTI input of unknown modality under auto is taken as
        CT when the model holds CT statistics (an nnU-Net dataset has one channel type), else as MR."""
        if self.normalize == "auto" and kind == "nifti" and not modality:
            modality = "CT" if self.ct is not None else "MR"
        return scheme_for(self.normalize, modality, kind)

    def statistics(self, scheme: str, series: str) -> Statistics:
        """The statistics SCHEME applies to a slice of SERIES."""
        stats = self.ct if scheme == "ct" else self.series.get(series)
        if stats is None:
            raise ValueError(f"no {scheme} intensity statistics for series {series!r}")
        return stats

    def fingerprint(self) -> str:
        """A digest of the scheme and every statistic it applies (a decode cache key part)."""
        return hashlib.sha1(repr((self.normalize, self.ct, sorted(self.series.items()))).encode()).hexdigest()

    def stored(self) -> dict:
        """What the model keeps: the scheme and the dataset (CT) statistics; series statistics are per input."""
        return {"normalize": self.normalize, "ct": asdict(self.ct) if self.ct else None}

    @classmethod
    def of_model(cls, normalize: str, ct: Mapping[str, float] | None) -> Intensity:
        """A model's scheme and CT statistics (ModelInfo.normalize, ModelInfo.ct_statistics)."""
        return cls(normalize, Statistics(**ct) if ct else None)


def normalise_series(slices: Sequence[np.ndarray], scheme: str, intensity: Intensity) -> list[np.ndarray]:
    """The raw slices of one series as model input under SCHEME (not window): CT statistics from INTENSITY, zscore
    statistics from the series itself."""
    stats = intensity.ct if scheme == "ct" else series_statistics(slices)
    if stats is None:
        raise ValueError("this model has no CT intensity statistics (it was trained without data.normalize=ct)")
    return [zscored(s, stats) for s in slices]


def check_normalize(normalize: str) -> None:
    """Refuse an unknown scheme in one line."""
    if normalize not in SCHEMES:
        raise ValueError(f"data.normalize={normalize!r}: choose one of {', '.join(SCHEMES)}")
