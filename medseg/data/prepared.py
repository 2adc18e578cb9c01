"""The format of a prepared folder (medseg-prepare output): OUT/medseg.json and litdata chunks per split."""

from __future__ import annotations

import json
from pathlib import Path

METADATA = "medseg.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


def read_metadata(root: str | Path) -> dict:
    """OUT/medseg.json of a prepared folder (local path or fsspec URL), validated as plain data."""
    import fsspec

    url = f"{str(root).rstrip('/')}/{METADATA}"
    try:
        with fsspec.open(url, "r") as handle:
            meta = json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"{root}: not a prepared dataset (no {METADATA}); run medseg-prepare first") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{url}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION or set(meta.get("splits", {})) != set(SPLITS):
        raise ValueError(f"{url}: not a medseg-prepare metadata file of format {FORMAT_VERSION}")
    return meta


def verify_chunks(root: str | Path, split: str, meta: dict) -> str | None:
    """None when every chunk of SPLIT is present with its recorded size, else a one-line problem naming the file."""
    folder = Path(root) / split
    for chunk in meta["splits"][split]["chunks"]:
        path = folder / chunk["filename"]
        if not path.is_file():
            return f"{path}: chunk missing"
        if path.stat().st_size != chunk["bytes"]:
            return f"{path}: chunk is {path.stat().st_size} bytes, {chunk['bytes']} were written: corrupt or truncated"
    return None
