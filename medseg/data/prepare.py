"""Prepare a dataset once for streaming: decode, window, resize and pair labels, split by patient, write litdata chunks.

    medseg-prepare SRC OUT [--workers N] [--dtype float16|uint8] [key=value data settings ...]

SRC is a data root in either layout (DICOM tree or image folder); the data settings are the
`data.*` keys of the training config (e.g. `layout=folder image_size=256 mask_threshold=128
'patient_regex=^([A-Z]+_\\d+)'`). OUT receives `train/`, `val/` and `test/` (litdata chunks; the
training split ordered by the nested data_fraction subsets) and `medseg.json` (settings, counts,
chunk sizes, a fingerprint of the sources). SRC is never written; a rerun with the same sources and
settings does nothing. Train with `python train.py data=stream data.root=OUT`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medseg.data.checks import data_checks, run_checks
from medseg.data.context import series_stacks
from medseg.data.datamodule import SegmentationDataModule
from medseg.data.decode import MaskValueError
from medseg.data.index import Sample, source_fingerprint
from medseg.data.nifti import nnunet_class_names
from medseg.data.partial_labels import labelled_vector
from medseg.data.prepared import FORMAT_VERSION, METADATA, SPLITS, file_sha256, read_metadata, verify_chunks
from medseg.data.split import subset_patients
from medseg.utils.cli import run_cli
from medseg.utils.io import atomic_path
from medseg.utils.privacy import pseudonym, pseudonymous_path

log = logging.getLogger(__name__)
SETTINGS = (
    "layout",
    "class_names",
    "in_channels",
    "context_slices",
    "spacing",
    "image_size",
    "size_policy",
    "window",
    "normalize",
    "mask_mapping",
    "mask_threshold",
    "ignore_index",
    "missing_labels",
    "patient_regex",
    "split",
    "seed",
    "num_folds",
    "fold",
)


@dataclass(frozen=True)
class Item:
    """One sample to encode, with everything a litdata worker needs."""

    id: int
    sample: Sample
    root: Path
    refused: Path
    stack: tuple[Sample, ...] = ()  # the samples whose images are stacked as its channels (context slices)


@lru_cache(maxsize=32)
def _decoded(decode, sample: Sample):
    """DECODE(SAMPLE) with its metadata, remembered for the neighbouring items that stack the same slice (a
    worker encodes a series' slices in order)."""
    return decode(sample, with_meta=True)


def encode_item(item: Item, decode, dtype: str, num_classes: int) -> dict | None:
    """Decode one sample into a litdata item; None (and a line in refused.jsonl) when it cannot be read."""
    try:
        image, mask, meta = _decoded(decode, item.sample)
        if len(item.stack) > 1:
            image = np.concatenate([_decoded(decode, s)[0] for s in item.stack], axis=-1)
    except (ValueError, OSError) as exc:
        logging.getLogger(__name__).error("refused %s", exc)
        kind = "mask_values" if isinstance(exc, MaskValueError) else "unreadable"
        line = json.dumps({"id": item.id, "kind": kind, "reason": str(exc)}) + "\n"
        fd = os.open(item.refused, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())  # one write: lines from parallel workers never interleave
        finally:
            os.close(fd)
        return None
    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8) if dtype == "uint8" else image.astype(np.float16)
    spacing = meta.pixel_spacing if meta is not None and meta.pixel_spacing else (math.nan, math.nan)
    return {
        "id": item.id,
        "image": np.ascontiguousarray(pixels),
        "mask": np.ascontiguousarray(mask.astype(np.uint8)),
        "patient": pseudonym(item.sample.patient),
        "series": pseudonym(meta.series_uid) if meta is not None else "",
        "source": pseudonymous_path(item.sample.image.relative_to(item.root)),
        "frame": int(item.sample.frame),
        "spacing": [float(spacing[0]), float(spacing[1])],
        "labelled": labelled_vector(item.sample.unlabelled, num_classes).astype(np.uint8),
    }


def _chunks(folder: Path) -> list[dict]:
    """The chunk files of one split with their sizes, as index.json lists them."""
    index = json.loads((folder / "index.json").read_text())
    return [
        {
            "filename": c["filename"],
            "bytes": (folder / c["filename"]).stat().st_size,
            "items": c["chunk_size"],
            "sha256": file_sha256(folder / c["filename"]),
        }
        for c in index["chunks"]
    ]


def _write_chunks(items: list[Item], folder: Path, encode, workers: int, chunk_bytes: str, compression) -> None:
    """litdata's optimize over ITEMS into FOLDER, with forked workers where the platform can fork."""
    from litdata import optimize

    optimize(
        fn=encode,
        inputs=items,
        output_dir=str(folder),
        num_workers=max(1, min(workers, len(items))),
        chunk_bytes=chunk_bytes,
        compression=compression,
        reorder_files=False,
        keep_data_ordered=True,  # chunk order = item order: data_fraction subsets are prefixes
        verbose=False,
        start_method="fork" if "fork" in multiprocessing.get_all_start_methods() else None,
    )


def _clean_process_context() -> BaseContext:
    """A context whose processes hold no threads of this one: a fork server with this module preloaded.

    Forking a process whose threads hold locks (torch's OpenMP pool, loggers, trackers) can leave the child
    waiting forever; litdata's workers are forked from such a clean process instead."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    multiprocessing.set_forkserver_preload([__name__])  # takes effect when the server starts
    return multiprocessing.get_context("forkserver")


def _optimize(
    items: list[Item], folder: Path, dm: SegmentationDataModule, dtype: str, workers: int, chunk_bytes: str, compression
) -> None:
    folder.mkdir(parents=True)
    encode = partial(encode_item, decode=dm._prepare, dtype=dtype, num_classes=dm.num_classes)
    with ProcessPoolExecutor(1, mp_context=_clean_process_context()) as pool:
        pool.submit(_write_chunks, items, folder, encode, workers, chunk_bytes, compression).result()


def prepare(
    src: str | Path,
    out: str | Path,
    workers: int = 1,
    dtype: str = "float16",
    chunk_bytes: str = "64MB",
    compression: str | None = None,
    **data: Any,
) -> dict:
    """Write SRC as litdata chunks per split into OUT; returns the metadata written to OUT/medseg.json."""
    if dtype not in ("float16", "uint8"):
        raise ValueError(f"dtype must be float16 or uint8, got {dtype!r}")
    run_checks(data_checks(data, ""))
    src, out = Path(src).expanduser().resolve(), Path(out).expanduser().resolve()
    if out == src or src in out.parents:
        raise ValueError(f"{out}: the output must not be inside the source folder {src}")
    if data.get("layout") == "nnunet" and "class_names" not in data:
        data["class_names"] = nnunet_class_names(src)
    dm = SegmentationDataModule(root=str(src), **data, preload=False, split_file=None, decode_cache=None)
    dm.setup()
    settings = {k: dm.hparams[k] for k in SETTINGS}
    settings["image_size"] = list(dm.image_size)
    settings["class_names"] = list(settings["class_names"])
    settings["split"] = list(settings["split"])
    source = source_fingerprint([s for items in dm.splits.values() for s in items])
    current = read_metadata(out) if (out / METADATA).is_file() else None
    if current and current["settings"] == json.loads(json.dumps(settings)) and current["source"] == source:
        if all(verify_chunks(out, name, current) is None for name in SPLITS):
            log.info("%s is up to date", out)
            return current
    if out.exists() and any(out.iterdir()) and not (out / METADATA).is_file() and not (out / ".partial").is_file():
        raise FileExistsError(f"{out}: not empty and not a medseg-prepare output; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / ".partial").touch()
    (out / METADATA).unlink(missing_ok=True)
    rank = {p: i for i, p in enumerate(subset_patients(dm.patients["train"], 1.0, dm.hparams.seed))}
    ordered = {
        "train": sorted(dm.splits["train"], key=lambda s: rank[s.patient]),  # stable: slices keep their order
        "val": dm.splits["val"],
        "test": dm.splits["test"],
    }
    meta: dict = {"format": FORMAT_VERSION, "settings": settings, "source": source, "dtype": dtype, "splits": {}}
    meta["compression"] = compression
    meta["intensity"] = dm.intensity.stored()  # the CT statistics of the training split, for the checkpoints
    for name, samples in ordered.items():
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        refused_file = out / f".{name}.refused.jsonl"
        refused_file.unlink(missing_ok=True)
        stacks = series_stacks(samples, dm.hparams.context_slices)
        items = [Item(i, s, src, refused_file, stacks[i]) for i, s in enumerate(samples)]
        if items:
            _optimize(items, folder, dm, dtype, workers, chunk_bytes, compression)
        refused = [json.loads(line) for line in refused_file.read_text().splitlines()] if refused_file.is_file() else []
        refused_file.unlink(missing_ok=True)
        if any(r["kind"] == "mask_values" for r in refused):
            raise MaskValueError(next(r["reason"] for r in refused if r["kind"] == "mask_values"))
        if refused and dm.hparams.strict:
            raise ValueError(refused[0]["reason"])
        dropped = {r["id"] for r in refused}
        kept = [s for i, s in enumerate(samples) if i not in dropped]
        per_patient = Counter(s.patient for s in kept)
        meta["splits"][name] = {
            "items": len(kept),
            "patients": len(per_patient),
            "refused": len(dropped),
            "chunks": _chunks(folder) if kept else [],
            # slices of every training patient in data_fraction order (subset_patients takes prefixes of it)
            "patient_items": [per_patient[p] for p in sorted(rank, key=rank.__getitem__)] if name == "train" else [],
        }
        if name != "train":  # per-volume scores (test step, benchmarks); names as keyed pseudonyms
            volumes = dm.volumes(name)
            meta["splits"][name]["volumes"] = [{**v, "name": pseudonym(v["name"])} for v in volumes]
        log.info("%s: %d patients, %d slices, %d refused", name, len(per_patient), len(kept), len(dropped))
    if not meta["splits"]["train"]["items"] or not meta["splits"]["val"]["items"]:
        raise ValueError(f"{src}: no decodable samples left in the train or val split; see the errors above")
    with atomic_path(out / METADATA) as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    (out / ".partial").unlink(missing_ok=True)
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="medseg-prepare", description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="data root (DICOM tree or image folder)")
    parser.add_argument("out", type=Path, help="output folder for the prepared chunks")
    parser.add_argument("settings", nargs="*", help="data settings as key=value (YAML values), as data.* in training")
    parser.add_argument("--workers", type=int, default=1, help="parallel decoding processes")
    parser.add_argument("--dtype", choices=["float16", "uint8"], default="float16", help="stored image type")
    parser.add_argument("--chunk-bytes", default="64MB")
    parser.add_argument(
        "--compression", choices=["zstd", "none"], default="none", help="litdata chunk compression (zstd: volumes)"
    )
    parser.add_argument("--debug", action="store_true", help="full tracebacks")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("litdata").setLevel(logging.WARNING)
    compression = None if args.compression == "none" else args.compression
    data = {}
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"setting {item!r} is not key=value")
        data[key.removeprefix("data.")] = yaml.safe_load(value)
    meta = run_cli(
        "medseg-prepare",
        args.debug,
        lambda: prepare(args.src, args.out, args.workers, args.dtype, args.chunk_bytes, compression, **data),
    )
    print(json.dumps({k: {f: v[f] for f in ("patients", "items", "refused")} for k, v in meta["splits"].items()}))


if __name__ == "__main__":
    main()
