"""Evaluate a checkpoint or ONNX model on a folder of images + masks (or a DICOM dataset).

    medseg-eval MODEL [MODEL ...] DATA_DIR --out DIR [--mask-threshold 128] [--worst 5] [--tta hflip]
                [--per-slice] [--nsd-tolerance 2]

Several checkpoints are evaluated as one ensemble (softmax averaged).

A case is a volume (the slices of one DICOM series, stacked along the slice normal) or a 2-D image;
`--per-slice` scores each slice of a series on its own. Per case and class: Dice and IoU
(torchmetrics), HD95 and the normalised surface distance at a tolerance (NSD; MONAI), in millimetres
with the slice spacing where the DICOM geometry is known, pixels otherwise; for volumes also the
predicted and true volume in mL. Empty-mask convention (as nnU-Net and MONAI): empty reference and
empty prediction -> NaN, left out of means; one of them empty -> Dice 0, IoU 0, NSD 0, HD95 NaN
(undefined). Writes cases.csv (one row per case and class), summary.csv (mean +- std over cases per
class, then the whole-split Dice and IoU) and overlays of the worst cases (a volume's busiest slice).
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

from medseg.data.context import series_stacks
from medseg.data.decode import load_image_meta, load_mask
from medseg.data.index import Sample
from medseg.data.intensity import Intensity
from medseg.data.partial_labels import mark_missing, read_missing_labels
from medseg.data.sources import detect_layout, index_layout, sample_intensity
from medseg.deploy.predictor import Predictor
from medseg.evaluation.scores import SplitScores, case_scores
from medseg.evaluation.volumes import Scored, group_cases
from medseg.utils.cli import add_inference_options, inference_options, progress, run_cli
from medseg.utils.io import atomic_path
from medseg.utils.privacy import output_name, pseudonym, pseudonymous_path
from medseg.utils.visualize import overlay_grid, to_uint8

PER_CASE = ("dice", "iou", "hd95", "nsd", "volume_pred_ml", "volume_true_ml")  # summarised over cases
VOLUMES = ("volume_pred", "volume_true")


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
    per_slice: bool = False,
    nsd_tolerance: float = 2.0,
    missing_labels: str | Path | None = None,
) -> list[dict]:
    """Evaluate MODEL (one model or an ensemble of checkpoints; TTA and post-processing as the Predictor
    takes them) on the labelled images under DATA_DIR (one split of a run's split.json); returns rows.

    A case is a volume (the slices of one series; PER_SLICE: each slice) or a 2-D image, named by keyed
    pseudonym (of the series, of the SOP instance and frame, or of the image's path) unless KEEP_NAMES.
    NSD_TOLERANCE is the normalised surface distance's tolerance in mm (pixels without spacing). MISSING_LABELS: a
    JSON file of case -> class names its labels leave out; those (case, class) pairs are not scored."""
    predictor = Predictor(model, tta=tta, keep_largest=keep_largest)
    info, out, data_dir = predictor.info, Path(out), Path(data_dir)
    classes = info.class_names
    samples = index_layout(data_dir, detect_layout(data_dir), patient_regex=patient_regex)
    if split_file is not None:
        samples = split_samples(samples, data_dir, split_file, split)
    if missing_labels is not None:
        samples = mark_missing(samples, read_missing_labels(data_dir / missing_labels, classes))
    whole, scored, names = SplitScores(classes), [], []
    intensity = sample_intensity(samples, info.normalize, Intensity.of_model(info.normalize, info.ct_statistics).ct)
    decoded = [load_image_meta(sample, info.in_channels, info.window, intensity) for sample in samples]
    images = {sample: image for sample, (image, _) in zip(samples, decoded, strict=True)}
    stacks = series_stacks(samples, info.context_slices)  # the same stacks as in training
    items = zip(samples, decoded, stacks, strict=True)
    for sample, (image, meta), stack in progress(items, len(samples), "evaluating"):
        target = load_mask(sample, len(classes), mask_mapping, mask_threshold, meta=meta, shape=image.shape[:2])
        layers = [
            images[s] if s in images else load_image_meta(s, info.in_channels, info.window, intensity)[0] for s in stack
        ]
        pred = predictor.segment(np.concatenate(layers, axis=-1), spacing=meta.pixel_spacing if meta else None)
        pred = np.where(np.isin(pred, sample.unlabelled), 0, pred)  # a class the case leaves out: not scored
        whole.update(pred, target)
        scored.append(Scored(sample, meta, image, target, pred))
        names.append(
            f"{pseudonym(meta.sop_uid)}_{sample.frame:04d}"
            if meta is not None
            else output_name(sample.image, data_dir / "images", keep_names)
        )
    rows, ranked = [], []
    for case in group_cases(scored, names, per_slice):
        pred, target = case.arrays()
        scores = case_scores(pred, target, len(classes), case.spacing, nsd_tolerance)
        unit = "mm" if case.spacing else "px"
        for k, cls in enumerate(classes[1:]):
            values = {m: scores[m][k] for m in ("dice", "iou", "hd95", "nsd")}
            volumes = {f"{m}_ml": scores[m][k] if case.is_volume and case.spacing else np.nan for m in VOLUMES}
            rows.append(dict(case=case.name, cls=cls, **values, **volumes, slices=len(case.slices), unit=unit))
        ranked.append((np.nanmean(scores["dice"]) if not np.isnan(scores["dice"]).all() else 1.0, case))
    _write_csv(out / "cases.csv", rows)
    _write_csv(out / "summary.csv", summary_rows(rows, classes, whole.compute()))
    for score, case in sorted(ranked, key=lambda c: c[0])[:worst]:
        shown = max(case.slices, key=lambda s: int((s.target > 0).sum() + (s.pred > 0).sum()))
        grid = overlay_grid(shown.image.transpose(2, 0, 1)[None], shown.target[None], shown.pred[None], classes)
        suffix = f"_slice{shown.sample.slice_index:03d}" if case.is_volume else ""
        with atomic_path(out / "worst" / f"{score:.3f}_{case.name}{suffix}.png") as tmp:
            Image.fromarray(to_uint8(grid)).save(tmp, format="PNG")
    return rows


def summary_rows(rows: list[dict], classes: Sequence[str], whole: dict[str, float]) -> list[dict]:
    """Mean +- std over cases per class and metric, then the whole-split Dice and IoU (`dice_split`, as the
    test step scores a split) per class and their mean."""
    summary = []
    for cls in classes[1:]:
        for metric in PER_CASE:
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
    parser.add_argument("--per-slice", action="store_true", help="score each slice of a series as its own case")
    parser.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm (default: 2)")
    parser.add_argument("--missing-labels", default=None, help="JSON: case -> class names its labels leave out")
    add_inference_options(parser)
    parser.add_argument("--debug", action="store_true", help="full tracebacks")
    args = parser.parse_args(argv)
    keys: tuple[str, ...] = ("mask_threshold", "mask_mapping", "worst", "patient_regex", "split_file", "split")
    keys += ("keep_names", "per_slice", "nsd_tolerance", "missing_labels")
    options = {key: getattr(args, key) for key in keys} | inference_options(args)
    run_cli("medseg-eval", args.debug, lambda: evaluate(args.model, args.data_dir, args.out, **options))
    with open(args.out / "summary.csv") as handle:
        print(handle.read())


if __name__ == "__main__":
    main()
