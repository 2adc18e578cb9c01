"""The format of a prepared folder (medseg-prepare output): OUT/medseg.json and litdata chunks per split."""

from __future__ import annotations

import hashlib
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


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def verify_chunks(root: str | Path, split: str, meta: dict) -> str | None:
    """None when SPLIT's chunks are those medseg-prepare wrote (present, same size and SHA-256, litdata's
    index.json listing the same files and item counts), else a one-line problem naming the file."""
    folder, recorded = Path(root) / split, meta["splits"][split]
    chunks = recorded["chunks"]
    if not chunks:
        return None
    try:
        index = json.loads((folder / "index.json").read_text())
        listed = [(c["filename"], int(c["chunk_size"])) for c in index["chunks"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{folder / 'index.json'}: litdata's index is missing or unreadable ({type(exc).__name__})"
    total = sum(n for _, n in listed)
    if total != recorded["items"] or sum(recorded.get("patient_items") or [total]) != total:
        return f"{folder / 'index.json'}: {total} items in the chunks; {METADATA} records other counts"
    if [name for name, _ in listed] != [c["filename"] for c in chunks]:
        return f"{folder / 'index.json'}: lists other chunks than {METADATA} records"
    for chunk in chunks:
        path = folder / chunk["filename"]
        if not path.is_file():
            return f"{path}: chunk missing"
        if path.stat().st_size != chunk["bytes"]:
            return f"{path}: chunk is {path.stat().st_size} bytes, {chunk['bytes']} were written: corrupt or truncated"
        if "sha256" in chunk and file_sha256(path) != chunk["sha256"]:
            return f"{path}: chunk content differs from what medseg-prepare wrote (checksum): corrupt"
    return None
