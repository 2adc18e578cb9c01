"""Which series a model segments: rules on the series' headers, each failing test a one-line reason."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pydicom

from medseg.data.geometry import slice_normal

KEYS = {"name", "modality", "series_description", "body_part", "slices", "orientation", "pixel_spacing"}
ORIENTATIONS = {"axial": 2, "coronal": 1, "sagittal": 0}  # the patient axis the slice normal runs along


def check_rules(rules: Sequence[Mapping[str, Any]], where: str) -> list[dict]:
    """RULES as plain dicts; an unknown key or a bad value ends in one line naming WHERE and the rule."""
    checked = []
    for i, rule in enumerate(rules):
        unknown = set(rule) - KEYS
        if unknown:
            raise ValueError(f"{where}: rule {i}: unknown keys {sorted(unknown)}; use {sorted(KEYS)}")
        for key in ("series_description", "body_part"):
            if key in rule:
                try:
                    re.compile(rule[key])
                except re.error as exc:
                    raise ValueError(f"{where}: rule {i}: {key} is not a regular expression ({exc})") from None
        if "orientation" in rule and rule["orientation"] not in ORIENTATIONS:
            raise ValueError(f"{where}: rule {i}: orientation must be one of {sorted(ORIENTATIONS)}")
        for key in ("slices", "pixel_spacing"):
            if key in rule and not (isinstance(rule[key], list | tuple) and len(rule[key]) == 2):
                raise ValueError(f"{where}: rule {i}: {key} must be [min, max]")
        checked.append(dict(rule))
    return checked


def orientation_of(ds: pydicom.Dataset) -> str | None:
    """axial, coronal or sagittal: the patient axis closest to the slice normal; None without geometry."""
    if "ImageOrientationPatient" not in ds:
        return None
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    axis = int(np.argmax(np.abs(slice_normal(iop))))
    return next(name for name, a in ORIENTATIONS.items() if a == axis)


def rule_failure(rule: Mapping[str, Any], first: pydicom.Dataset, slices: int) -> str | None:
    """Why a series (its first header, its slice count) fails RULE; None when it matches."""
    if "modality" in rule and str(first.get("Modality", "")) != rule["modality"]:
        return f"Modality {first.get('Modality', '')!r} is not {rule['modality']!r}"
    for key, keyword in (("series_description", "SeriesDescription"), ("body_part", "BodyPartExamined")):
        if key in rule and not re.search(rule[key], str(first.get(keyword, "")), re.IGNORECASE):
            return f"{keyword} does not match {rule[key]!r}"
    if "slices" in rule and not rule["slices"][0] <= slices <= rule["slices"][1]:
        return f"{slices} slices, outside {list(rule['slices'])}"
    if "orientation" in rule and orientation_of(first) != rule["orientation"]:
        return f"orientation {orientation_of(first)} is not {rule['orientation']}"
    if "pixel_spacing" in rule:
        spacing = [float(v) for v in first.get("PixelSpacing", [])]
        low, high = rule["pixel_spacing"]
        if not spacing or not all(low <= v <= high for v in spacing):
            return f"PixelSpacing {spacing} outside {[low, high]} mm"
    return None


def select(rules: Sequence[Mapping[str, Any]], first: pydicom.Dataset, slices: int) -> tuple[str | None, str]:
    """(the name of the first rule the series matches, ''), or (None, every rule's reason)."""
    reasons = []
    for i, rule in enumerate(rules):
        failure = rule_failure(rule, first, slices)
        if failure is None:
            return str(rule.get("name", f"rule {i}")), ""
        reasons.append(f"{rule.get('name', f'rule {i}')}: {failure}")
    return None, "; ".join(reasons) or "no rules"
