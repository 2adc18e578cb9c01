"""Data settings checked before anything is decoded: one ValueError naming the key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from medseg.data.dicom import WINDOW_PRESETS
from medseg.data.intensity import SCHEMES

# key -> (value, check, what was expected)
Checks = dict[str, tuple[Any, Callable[[Any], bool], str]]


def positive_int(value) -> bool:
    """An int (not a bool) above 0."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def number(value) -> bool:
    """An int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def size(value) -> bool:
    """A positive integer or [height, width] of positive integers."""
    return positive_int(value) or (
        isinstance(value, list | tuple) and len(value) == 2 and all(map(positive_int, value))
    )


def label_value(value) -> bool:
    """An integer label value of a mask file (16 bits at most)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535


def window(value) -> bool:
    """None, a preset name, or [center, width > 0]."""
    if value is None or (isinstance(value, str) and value in WINDOW_PRESETS):
        return True
    return isinstance(value, list | tuple) and len(value) == 2 and all(map(number, value)) and value[1] > 0


def mapping(value) -> bool:
    """None or {label value: class index}, keys as numbers or digit strings."""

    def label(v) -> bool:
        return label_value(v) or (isinstance(v, str) and v.isdigit())

    return value is None or (isinstance(value, Mapping) and all(label(k) and label(v) for k, v in value.items()))


def data_checks(data: Mapping, prefix: str) -> Checks:
    """The checks of the decoding settings in DATA (window, normalize, mask threshold and mapping), keys named with
    PREFIX."""
    checks = {
        "window": (window, f"null, a preset {sorted(WINDOW_PRESETS)} or [center, width > 0]"),
        "normalize": (lambda v: v in SCHEMES, f"one of {', '.join(SCHEMES)}"),
        "mask_threshold": (lambda v: v is None or label_value(v), "null or an integer label value in 0..65535"),
        "mask_mapping": (mapping, "null or a mapping of label values to class indices, e.g. {255: 1}"),
    }
    return {f"{prefix}{key}": (data.get(key), ok, expected) for key, (ok, expected) in checks.items() if key in data}


def run_checks(checks: Checks, plain: Callable[[Any], Any] = lambda v: v) -> None:
    """Raise one ValueError naming the first key whose value (made PLAIN first) fails its check."""
    for key, (value, ok, expected) in checks.items():
        value = plain(value)
        if not ok(value):
            raise ValueError(f"{key}: expected {expected}, got {value!r}")
