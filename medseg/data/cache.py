"""Decoded-slice cache keyed by file content and preprocessing parameters, in memory and optionally on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from functools import partial
from pathlib import Path

import numpy as np

from medseg.data.index import Sample
from medseg.utils.io import atomic_path

# Raise whenever a change to decoding, labels, resampling or sizing changes what a sample decodes to: cached arrays
# of an older version are then never served.
DECODE_VERSION = 2

log = logging.getLogger(__name__)


class DecodeCache:
    """Maps a sample (image bytes, label bytes, frame) plus preprocessing parameters to (image, mask)."""

    def __init__(self, params: dict, directory: str | os.PathLike | None = None) -> None:
        # images are kept as float32: every consumer (training, the test step, medseg-eval) sees the same values
        self.params = json.dumps({**params, "image_dtype": "float32"}, sort_keys=True, default=str)
        self.directory = Path(os.path.expanduser(str(directory))) if directory else None
        self._memory: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._digests: dict[tuple, str] = {}

    @classmethod
    def for_decoder(cls, decode: partial, directory: str | os.PathLike | None = None) -> DecodeCache:
        """A cache for DECODE (a partial of a decode function): its key carries the function, the decode version
        and every argument bound to it (an Intensity by the statistics it holds)."""
        params = {k: v.fingerprint() if hasattr(v, "fingerprint") else v for k, v in decode.keywords.items()}
        function = f"{decode.func.__module__}.{decode.func.__qualname__}"
        return cls({**params, "decode": function, "decode_version": DECODE_VERSION}, directory)

    def _digest(self, path: Path) -> str:
        """SHA-1 of a file's bytes, remembered while its size and mtime stay the same."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = hashlib.sha1(path.read_bytes()).hexdigest()
        return self._digests[key]

    def key(self, sample: Sample) -> str:
        """Cache key: content of image and labels, frame, and preprocessing parameters."""
        label = "label-free" if sample.label_free else self._digest(sample.mask)
        parts = [self._digest(sample.image), label, str(sample.frame), self.params]
        return hashlib.sha1("|".join(parts).encode()).hexdigest()

    def get(self, sample: Sample) -> tuple[np.ndarray, np.ndarray] | None:
        """Cached (image float32, mask uint8), or None."""
        key = self.key(sample)
        if key in self._memory:
            return self._memory[key]
        if self.directory is not None:
            path = self.directory / key[:2] / f"{key}.npz"
            if path.is_file():
                try:
                    with np.load(path) as data:
                        self._memory[key] = (data["image"], data["mask"])
                except (OSError, ValueError, KeyError):  # a damaged cache file is decoded again
                    return None
                return self._memory[key]
        return None

    def put(self, sample: Sample, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store a decoded pair (image float32, mask uint8) and return it."""
        key = self.key(sample)
        entry = (image.astype(np.float32), mask.astype(np.uint8))
        self._memory[key] = entry
        if self.directory is not None:
            try:
                with atomic_path(self.directory / key[:2] / f"{key}.npz") as tmp:
                    with open(tmp, "wb") as handle:
                        np.savez(handle, image=entry[0], mask=entry[1])
            except OSError as exc:  # full or read-only disk: the cache is an optimisation, never a filter
                log.warning("decode cache %s not writable (%s); continuing without it", self.directory, exc)
                self.directory = None
        return entry

    def __len__(self) -> int:
        return len(self._memory)
