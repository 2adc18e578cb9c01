"""Evaluate a checkpoint or ONNX model on a folder of images + masks (or a DICOM dataset).

    medseg-eval MODEL [MODEL ...] DATA_DIR --out DIR [--mask-threshold 128] [--worst 5] [--tta hflip]

Several checkpoints are evaluated as one ensemble (softmax averaged).

Per case and class: Dice and IoU (torchmetrics) and HD95 (MONAI), in millimetres where the DICOM
pixel spacing is known, pixels otherwise. Empty-mask convention (as nnU-Net and MONAI): empty
reference and empty prediction -> NaN, left out of means; one of them empty -> Dice 0, IoU 0, HD95
NaN (undefined). Writes cases.csv, summary.csv and overlays of the worst cases.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from medseg.data.decode import load_image_meta, load_mask
from medseg.data.index import Sample, index_dicom, index_folder
from medseg.deploy.predictor import Predictor
from medseg.evaluation.scores import SplitScores, case_scores
from medseg.utils.cli import add_inference_options, inference_options, progress, run_cli
from medseg.utils.io import atomic_path
from medseg.utils.privacy import output_name, pseudonym, pseudonymous_path
from medseg.utils.visualize import overlay_grid, to_uint8


def evaluate(
    model: str | Path | Sequence[str | Path],
    data_dir: str | Path,
    out: str | Path,
    *,
    mask_threshold: int | None = None,
    mask_mapping: dict | None = None,
    worst: int = 5,
    patient_regex: str = r"^(.*)$",
    split_file: str | Path | None = None,
    split: str = "test",
    tta: Sequence[str] | None = None,
    keep_largest: dict[str, int] | None = None,
    keep_names: bool = False,
) -> list[dict]:
    """Evaluate MODEL (one model or an ensemble of checkpoints; TTA and post-processing as the Predictor
    takes them) on the labelled images under DATA_DIR (one split of a run's split.json); returns rows.

    Cases are named by keyed pseudonym (of the SOP instance, or of the image's path) unless KEEP_NAMES."""
    predictor = Predictor(model, tta=tta, keep_largest=keep_largest)
    info, out, data_dir = predictor.info, Path(out), Path(data_dir)
    classes = info.class_names
    dicom = any((data_dir / "images").rglob("*.dcm"))
    samples = index_dicom(data_dir) if dicom else index_folder(data_dir, patient_regex)
    if split_file is not None:
        samples = split_samples(samples, data_dir, split_file, split)
    rows, cases, whole = [], [], SplitScores(classes)
    for sample in progress(samples, len(samples), "evaluating"):
        image, meta = load_image_meta(sample, info.in_channels, info.window)
        target = load_mask(sample, len(classes), mask_mapping, mask_threshold, meta=meta, shape=image.shape[:2])
        pred = predictor.segment(image)
        whole.update(pred, target)
        spacing = list(meta.pixel_spacing) if meta is not None and meta.pixel_spacing else None
        scores = case_scores(pred, target, len(classes), spacing)
        name = (
            f"{pseudonym(meta.sop_uid)}_{sample.frame:04d}"
            if meta is not None
            else output_name(sample.image, data_dir / "images", keep_names)
        )
        unit = "mm" if spacing else "px"
        for k, cls in enumerate(classes[1:]):
            rows.append(dict(case=name, cls=cls, **{m: scores[m][k] for m in ("dice", "iou", "hd95")}, unit=unit))
        mean = np.nanmean(scores["dice"]) if not np.isnan(scores["dice"]).all() else 1.0
        cases.append((mean, name, image, target, pred))
    _write_csv(out / "cases.csv", rows)
    _write_csv(out / "summary.csv", summary_rows(rows, classes, whole.compute()))
    for score, name, image, target, pred in sorted(cases, key=lambda c: c[0])[:worst]:
        grid = overlay_grid(image.transpose(2, 0, 1)[None], target[None], pred[None], classes)
        with atomic_path(out / "worst" / f"{score:.3f}_{name}.png") as tmp:
            Image.fromarray(to_uint8(grid)).save(tmp, format="PNG")
    return rows


def summary_rows(rows: list[dict], classes: Sequence[str], whole: dict[str, float]) -> list[dict]:
    """Mean +- std over cases per class and metric, then the whole-split Dice and IoU (`dice_split`, as the
    test step scores a split) per class and their mean."""
    summary = []
    for cls in classes[1:]:
        for metric in ("dice", "iou", "hd95"):
            values = np.array([r[metric] for r in rows if r["cls"] == cls], dtype=float)
            finite = np.isfinite(values).any()
            mean, std = (np.nanmean(values), np.nanstd(values)) if finite else (np.nan, np.nan)
            summary.append(dict(cls=cls, metric=metric, mean=mean, std=std, n=int(np.isfinite(values).sum())))
    for cls in [*classes[1:], "mean"]:
        for metric in ("dice", "iou"):
            summary.append(dict(cls=cls, metric=f"{metric}_split", mean=whole[f"{metric}_{cls}"], std=np.nan, n=1))
    return summary


def split_samples(samples: list[Sample], data_dir: Path, split_file: str | Path, split: str) -> list[Sample]:
    """The samples a training run's split.json puts in SPLIT (images are stored relative to the data root)."""
    splits = json.loads(Path(split_file).read_text())["splits"]
    if split not in splits:
        raise ValueError(f"{split_file}: no split {split!r}; it holds {sorted(splits)}")
    wanted = {(item["image"], item.get("frame", 0)) for item in splits[split]}
    chosen = [s for s in samples if (pseudonymous_path(s.image.relative_to(data_dir)), s.frame) in wanted]
    if not chosen:
        raise ValueError(f"{split_file}: none of its {split!r} images are under {data_dir}")
    return chosen


def _write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["empty"])
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="medseg-eval", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, nargs="+", help="a .ckpt or .onnx model; several .ckpt: an ensemble")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mask-threshold", type=int, default=None, help="binarise masks at this value")
    parser.add_argument("--mask-mapping", type=json.loads, default=None, help='JSON, e.g. {"255": 1}')
    parser.add_argument("--patient-regex", default=r"^(.*)$")
    parser.add_argument("--worst", type=int, default=5, help="how many worst-case overlays to write")
    parser.add_argument("--split-file", type=Path, default=None, help="a run's split.json: evaluate one of its splits")
    parser.add_argument("--split", default="test", help="which split of --split-file (default: test)")
    parser.add_argument("--keep-names", action="store_true", help="name image cases by file name, not pseudonym")
    add_inference_options(parser)
    parser.add_argument("--debug", action="store_true", help="full tracebacks")
    args = parser.parse_args(argv)
    keys = ("mask_threshold", "mask_mapping", "worst", "patient_regex", "split_file", "split", "keep_names")
    options = {key: getattr(args, key) for key in keys} | inference_options(args)
    run_cli("medseg-eval", args.debug, lambda: evaluate(args.model, args.data_dir, args.out, **options))
    with open(args.out / "summary.csv") as handle:
        print(handle.read())


if __name__ == "__main__":
    main()
