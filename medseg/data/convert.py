"""DICOM -> Pascal VOC converter.

    medseg-convert SRC DST [--window abdomen] [--workers 2] [--jpeg] [--strict]

SRC is any folder of DICOM files; labels are taken from SRC/masks when it follows the medseg
layout (per-slice PNG by stem, a NIfTI volume per series folder, or DICOM SEG). DST receives
JPEGImages/ (lossless PNG unless --jpeg), SegmentationClass/ (palette PNG), ImageSets/Segmentation/
{train,val,test}.txt split by patient, and manifest.csv. Names, the manifest and logs carry only keyed
pseudonyms (medseg.utils.privacy) of patient, series and source path. SRC is never written to; every output
is written atomically; a rerun skips a file whose source and label content and outputs are unchanged.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError

from medseg.data.decode import load_mask
from medseg.data.dicom import NoPixelData, read_frames
from medseg.data.index import Sample, patient_key
from medseg.data.labels import find_label, label_key, label_lookups
from medseg.data.split import split_patients
from medseg.utils.cli import progress, run_cli
from medseg.utils.io import atomic_path
from medseg.utils.privacy import pseudonym, pseudonymous_path, register_source
from medseg.utils.visualize import palette_png

log = logging.getLogger(__name__)
FIELDS = ["stem", "source", "frame", "patient", "series", "window", "source_digest", "label_digest", "label"]


@dataclass
class Report:
    """What a conversion did."""

    rows: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason): not images
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, reason): broken images
    orphans: list[str] = field(default_factory=list)  # output files no manifest row refers to

    def summary(self) -> str:
        """A few lines for the console."""
        reasons = Counter(reason.split(" (")[0] for _, reason in self.failed)
        lines = [
            f"{len(self.rows)} frames written, {len(self.skipped)} files without images skipped, "
            f"{len(self.failed)} files refused"
        ]
        if self.orphans:
            lines.append(f"  {len(self.orphans)} output files belong to no source (e.g. {self.orphans[0]}): left alone")
        lines += [f"  {n} x {reason}" for reason, n in reasons.most_common()]
        return "\n".join(lines)


@dataclass(frozen=True)
class Job:
    """One source file and everything needed to convert it in a worker process."""

    path: Path
    src: Path
    dst: Path
    labels: dict
    window: object
    jpeg: bool
    previous: dict


def _save_png(image: Image.Image, path: Path, fmt: str) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt)


def file_digest(path: Path | None) -> str:
    """SHA-256 of a file's bytes ('' for no file)."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else ""


def _readable(path: Path) -> bool:
    """Whether an image output exists and decodes completely."""
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def _up_to_date(job: Job, rows: list[dict], digest: str) -> bool:
    """A previous conversion of this source whose content, labels and outputs are all still intact."""
    suffix = ".jpg" if job.jpeg else ".png"
    if not rows or any(r.get("source_digest") != digest for r in rows):
        return False
    sop = str(pydicom.dcmread(job.path, stop_before_pixels=True).get("SOPInstanceUID", ""))
    return all(
        r.get("label_digest") == file_digest(_label(job, int(r["frame"]), len(rows), sop))
        and _readable(job.dst / "JPEGImages" / f"{r['stem']}{suffix}")
        and (not r["label"] or _readable(job.dst / "SegmentationClass" / f"{r['stem']}.png"))
        for r in rows
    )


def _label(job: Job, frame: int, frames: int, sop: str) -> Path | None:
    return find_label(job.labels, job.path, frame, frames, sop, label_key(job.path, job.src))


def convert_file(job: Job) -> tuple[list[dict], tuple[str, str] | None, tuple[str, str] | None]:
    """Convert one file: (manifest rows, skipped reason, failure reason)."""
    rel = str(job.path.relative_to(job.src))
    source = pseudonymous_path(rel)
    digest = file_digest(job.path)
    previous = job.previous.get(source, [])
    if previous and _up_to_date(job, previous, digest):
        return previous, None, None
    try:
        frames = read_frames(job.path, job.window)
    except NoPixelData as exc:
        return [], (rel, str(exc).split(": ", 1)[-1]), None
    except Exception as exc:
        if isinstance(exc.__cause__, InvalidDicomError) and job.path.suffix.lower() != ".dcm":
            return [], (rel, "not a DICOM file"), None  # README, DICOMDIR companions, markers...
        return [], None, (rel, str(exc).split(": ", 1)[-1])
    header = pydicom.dcmread(job.path, stop_before_pixels=True)
    patient, series = (
        pseudonym(patient_key(header, job.path)[0]),
        pseudonym(str(header.get("SeriesInstanceUID", rel))),
    )
    sop = str(header.get("SOPInstanceUID", rel))
    rows = []
    for image, meta in frames:
        stem = f"{patient}_{series[:8]}_{pseudonym(rel + sop)[:10]}_{meta.frame:04d}"
        pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        suffix, fmt = (".jpg", "JPEG") if job.jpeg else (".png", "PNG")
        _save_png(Image.fromarray(pixels), job.dst / "JPEGImages" / f"{stem}{suffix}", fmt)
        label = _label(job, meta.frame, len(frames), sop)
        if label is not None:
            sample = Sample(job.path, label, "", "dicom", meta.frame)
            mask = load_mask(sample, 256, meta=meta, shape=image.shape[:2])
            _save_png(palette_png(mask), job.dst / "SegmentationClass" / f"{stem}.png", "PNG")
        window = meta.window if isinstance(meta.window, str | type(None)) else f"{meta.window[0]:g}/{meta.window[1]:g}"
        rows.append(
            dict(
                stem=stem,
                source=source,
                frame=meta.frame,
                patient=patient,
                series=series,
                window=window,
                source_digest=digest,
                label_digest=file_digest(label),
                label=label is not None,
            )
        )
    return rows, None, None


STEM = re.compile(r"^[0-9a-f]{16}_[0-9a-f]{8}_[0-9a-f]{10}_[0-9]{4}$")
HEX = re.compile(r"^[0-9a-f]*$")


def _valid_row(row: dict) -> bool:
    """A manifest row as medseg-convert writes it: pseudonymous stem and source, digests, a frame number."""
    return (
        bool(STEM.match(row.get("stem") or ""))
        and bool(re.match(r"^[0-9a-f]{16}(/[0-9a-f]{16})*$", row.get("source") or ""))
        and (row.get("frame") or "").isdigit()
        and all(HEX.match(row.get(k) or "") for k in ("source_digest", "label_digest"))
        and row.get("label") in ("True", "False")
    )


def _read_manifest(path: Path) -> dict[str, list[dict]]:
    """The previous conversion's rows by source; rows not as medseg-convert writes them are ignored (reconverted)."""
    previous: dict[str, list[dict]] = {}
    if not path.is_file():
        return previous
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    invalid = [r for r in rows if not _valid_row(r)]
    if invalid:
        log.warning(
            "%s: %d rows not as medseg-convert writes them; their sources are converted again", path, len(invalid)
        )
    bad_sources = {r.get("source") for r in invalid}
    for row in rows:
        if row.get("source") in bad_sources or not _valid_row(row):
            continue
        row["frame"] = int(row["frame"])
        row["label"] = row["label"] == "True"
        previous.setdefault(row["source"], []).append(row)
    return previous


def convert(
    src: str | Path,
    dst: str | Path,
    window=None,
    workers: int = 1,
    jpeg: bool = False,
    strict: bool = False,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 42,
) -> Report:
    """Convert every DICOM file under SRC (except SRC/masks) into a VOC tree at DST."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if dst == src or src in dst.parents:
        raise ValueError(f"{dst}: the output must not be inside the source folder {src}")
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such folder")
    register_source(src)
    labels = label_lookups(src / "masks")
    files = [p for p in sorted(src.rglob("*")) if p.is_file() and (src / "masks") not in p.parents]
    if not files:
        raise FileNotFoundError(f"{src}: no files to convert")
    previous = _read_manifest(dst / "manifest.csv")
    jobs = [Job(p, src, dst, labels, window, jpeg, previous) for p in files]
    report = Report()
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.CRITICAL)  # its decoder tracebacks; each refusal gets one line of ours
    executor = ProcessPoolExecutor(workers) if workers > 1 else None
    results = executor.map(convert_file, jobs, chunksize=8) if executor else map(convert_file, jobs)
    try:
        for rows, skipped, failed in progress(results, len(jobs), "converting"):
            report.rows += rows
            if skipped:
                report.skipped.append(skipped)
                log.info("skipped %s: %s", *skipped)
            if failed:
                report.failed.append(failed)
                log.error("refused %s: %s", *failed)
                if strict:
                    raise ValueError(f"{src / failed[0]}: {failed[1]}")
    finally:
        if executor:
            executor.shutdown(cancel_futures=True)
        pydicom_log.setLevel(level)
        _write_outputs(report.rows, dst, split, seed)  # --strict too: the manifest lists what was written
    written = {r["stem"] for r in report.rows}
    report.orphans = sorted(
        str(p.relative_to(dst))
        for folder in ("JPEGImages", "SegmentationClass")
        for p in (dst / folder).glob("*")
        if p.stem not in written and not p.name.startswith(".")
    )
    if report.orphans:
        log.warning("%d output files in %s belong to no converted source", len(report.orphans), dst)
    if not report.rows:
        raise ValueError(
            f"{src}: no DICOM frame could be converted ({len(report.failed)} files refused, "
            f"{len(report.skipped)} without images)"
        )
    return report


def _write_outputs(rows: list[dict], dst: Path, split: Sequence[float], seed: int) -> None:
    """manifest.csv and the patient-split image sets, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["stem"]))
    with atomic_path(dst / "manifest.csv") as tmp:
        tmp.write_text(buffer.getvalue())
    labelled = [r for r in rows if r["label"]]
    if len({r["patient"] for r in labelled}) >= 3:
        parts = split_patients([r["patient"] for r in labelled], split, seed)
        for name, patients in parts.items():
            stems = sorted(r["stem"] for r in labelled if r["patient"] in set(patients))
            with atomic_path(dst / "ImageSets" / "Segmentation" / f"{name}.txt") as tmp:
                tmp.write_text("".join(f"{s}\n" for s in stems))


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="medseg-convert", description="Convert DICOM to the Pascal VOC layout.")
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--window", default=None, help="preset (lung, abdomen, ...) or CENTER,WIDTH")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--jpeg", action="store_true", help="write JPEG instead of lossless PNG")
    parser.add_argument("--strict", action="store_true", help="stop at the first undecodable file")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--debug", action="store_true", help="full tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("medseg.progress").setLevel(logging.INFO)
    window = args.window
    if window and "," in window:
        window = [float(v) for v in window.split(",")]
    report = run_cli(
        "medseg-convert",
        args.debug,
        lambda: convert(args.src, args.dst, window, args.workers, args.jpeg, args.strict, seed=args.seed),
    )
    print(report.summary())


if __name__ == "__main__":
    main()
