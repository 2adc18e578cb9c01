"""Segment DICOM files/series or PNG/JPEG images with a checkpoint or ONNX model.

    medseg-predict MODEL [MODEL ...] INPUT --out DIR [--policy resize|sliding] [--nifti] [--tta hflip]

Writes per slice a class-index mask PNG (with a colour palette) and an overlay PNG; for DICOM input
also one DICOM SEG per series that references the source instances (and NIfTI with --nifti).
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from medseg.data.decode import load_dicom_frames, load_image, model_input
from medseg.data.dicom import slice_position
from medseg.data.index import IMAGE_SUFFIXES, Sample
from medseg.data.intensity import normalise_series
from medseg.data.nifti import label_volume, read_nifti_slice, slice_count
from medseg.deploy.predictor import Predictor
from medseg.deploy.seg import write_nifti, write_seg
from medseg.utils.cli import add_inference_options, inference_options, progress, run_cli
from medseg.utils.io import atomic_path
from medseg.utils.privacy import output_name, pseudonym, register_source
from medseg.utils.visualize import overlay, palette_png, to_uint8

log = logging.getLogger(__name__)


INPUT_SUFFIXES = (*IMAGE_SUFFIXES, ".dcm")


def is_nifti(path: Path) -> bool:
    """Whether PATH names a NIfTI volume."""
    return path.name.lower().endswith((".nii", ".nii.gz"))


def find_inputs(path: Path) -> list[Path]:
    """DICOM, NIfTI and image files at PATH (a file or a folder searched recursively)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input not found: {path}")
    files = [p for p in sorted(path.rglob("*")) if p.is_file() and (p.suffix.lower() in INPUT_SUFFIXES or is_nifti(p))]
    if not files:
        raise FileNotFoundError(f"{path}: no .dcm, .nii.gz, .png or .jpg files")
    return files


def group_series(files: Sequence[Path], skipped: list | None = None) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """DICOM files grouped by SeriesInstanceUID and ordered along the slice normal; unreadable ones go to SKIPPED."""
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # not DICOM, truncated
            _skip(skipped, path, f"not a readable DICOM file ({type(exc).__name__})")
            continue
        series[str(ds.get("SeriesInstanceUID", path.parent))].append((path, ds))
    return {uid: sorted(items, key=lambda item: slice_position(item[1])) for uid, items in series.items()}


def _skip(skipped: list | None, path: Path, reason: str) -> None:
    log.error("skipped %s: %s", path, reason)
    if skipped is not None:
        skipped.append((path, reason))


def save_mask_and_overlay(image: np.ndarray, mask: np.ndarray, out: Path, name: str) -> None:
    """Write NAME_mask.png (palette, class indices) and NAME_overlay.png, atomically."""
    with atomic_path(out / f"{name}_mask.png") as tmp:
        palette_png(mask).save(tmp, format="PNG")
    with atomic_path(out / f"{name}_overlay.png") as tmp:
        Image.fromarray(to_uint8(overlay(image.transpose(2, 0, 1), mask))).save(tmp, format="PNG")


def predict_volume(predictor: Predictor, path: Path, out: Path, policy: str, name: str, written: list) -> int:
    """Segment a NIfTI image volume slice by slice (context stacks, spacing as trained); its label volume, on the
    source's grid and in its orientation, goes to OUT/NAME_seg.nii.gz and WRITTEN. Returns the slices predicted."""
    import nibabel as nib

    info, scheme = predictor.info, predictor.intensity.scheme("", "nifti")
    raw = scheme != "window"
    decoded = [read_nifti_slice(path, k, info.window, raw) for k in range(slice_count(path))]
    images = [model_input(image, path, info.in_channels) for image, _ in decoded]
    images = normalise_series(images, scheme, predictor.intensity) if raw else images
    masks = predictor.segment_series(images, policy, [meta.pixel_spacing for _, meta in decoded])
    target = out / f"{name.removesuffix('.gz').removesuffix('.nii')}_seg.nii.gz"
    with atomic_path(target) as tmp:
        nib.save(label_volume(path, masks), tmp)
    written.append(target)
    return len(masks)


def predict(
    model: str | Path | Sequence[str | Path],
    source: str | Path,
    out: str | Path,
    policy: str = "resize",
    nifti: bool = False,
    keep_names: bool = False,
    **options,
) -> list[Path]:
    """Segment every slice under SOURCE (OPTIONS: the Predictor's tta, keep_largest); returns the SEG/NIfTI files.

    Output names are keyed pseudonyms (of the series UID, or of an image's path below SOURCE) unless KEEP_NAMES.
    """
    predictor = Predictor(model, **options)
    out, source = Path(out), Path(source)
    files = find_inputs(source)
    register_source(source if source.is_dir() else source.parent)
    dicoms = [p for p in files if p.suffix.lower() == ".dcm"]
    volumes = [p for p in files if is_nifti(p)]
    images = [p for p in files if p.suffix.lower() != ".dcm" and not is_nifti(p)]
    written: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    predicted = 0
    for uid, items in group_series(dicoms, skipped).items():
        predicted += predict_series(predictor, uid, items, out, policy, nifti, skipped, written)
    for path in volumes:
        predicted += predict_volume(predictor, path, out, policy, output_name(path, source, keep_names), written)
    for path in progress(images, len(images), "images"):
        try:
            image = load_image(Sample(path, path, "", "image"), predictor.info.in_channels)
        except ValueError as exc:
            _skip(skipped, path, str(exc).split(": ", 1)[-1])
            continue
        mask = predictor.segment_series([image], policy)[0]
        save_mask_and_overlay(image, mask, out, output_name(path, source, keep_names))
        predicted += 1
    if skipped:
        log.warning("%d input files skipped (see the lines above)", len(skipped))
    if not predicted:
        raise ValueError(f"{source}: none of its {len(files)} input files could be read (see the lines above)")
    return written


def segment_dicom_series(
    predictor: Predictor,
    items: Sequence[tuple[Path, pydicom.Dataset]],
    skipped: list,
    policy: str = "resize",
    name: str = "series",
) -> tuple[list[Path], list[np.ndarray], list[np.ndarray]]:
    """(source files, model inputs, masks) of one sorted series (ITEMS: its files and headers; each file decoded
    once, normalised as the model was trained, fed with its context stack); unreadable files go to SKIPPED."""
    info, paths = predictor.info, [path for path, _ in items]
    scheme = predictor.intensity.scheme(str(items[0][1].get("Modality", "")), "dicom")
    images: list[np.ndarray] = []
    spacings: list = []
    sources: list[Path] = []
    for path in progress(paths, len(paths), name):
        try:
            frames = load_dicom_frames(path, info.in_channels, info.window, raw=scheme != "window")
            images += [image for image, _ in frames]
            spacings += [meta.pixel_spacing for _, meta in frames]
        except ValueError as exc:  # no pixel data, undecodable
            _skip(skipped, path, str(exc).split(": ", 1)[-1])
            continue
        sources.append(path)
    if not sources:
        return [], [], []
    images = normalise_series(images, scheme, predictor.intensity) if scheme != "window" else images
    return sources, images, predictor.segment_series(images, policy, spacings)


def predict_series(
    predictor: Predictor,
    uid: str,
    items: Sequence[tuple[Path, pydicom.Dataset]],
    out: Path,
    policy: str,
    nifti: bool,
    skipped: list,
    written: list[Path],
) -> int:
    """Segment every frame of one sorted series; masks, overlays, its SEG (and NIfTI) go to OUT and WRITTEN.
    Returns the number of slices predicted."""
    name = pseudonym(uid)
    sources, images, masks = segment_dicom_series(predictor, items, skipped, policy, f"series {name}")
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        save_mask_and_overlay(image, mask, out, f"{name}_{i:04d}")
    if not sources:
        return 0
    try:
        written.append(write_seg(sources, masks, predictor.info.class_names, out))
    except Exception as exc:  # e.g. sources without the geometry a SEG needs
        log.warning("series %s: no DICOM SEG written (%s)", name, exc)
    if nifti:
        try:
            written.append(write_nifti(sources, masks, out))
        except (AttributeError, ValueError) as exc:  # no slice geometry (e.g. an enhanced multi-frame object)
            log.warning("series %s: no NIfTI written (%s)", name, exc)
    return len(masks)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="medseg-predict", description=__doc__.splitlines()[0])
    parser.add_argument(
        "model", type=Path, nargs="+", help="a .ckpt checkpoint or an .onnx file; several .ckpt: an ensemble"
    )
    parser.add_argument("input", type=Path, help="a DICOM file, a folder (series), or PNG/JPEG images")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--policy",
        choices=["resize", "sliding"],
        default="resize",
        help="resize to the training size, or slide training-size windows at native resolution",
    )
    parser.add_argument("--nifti", action="store_true", help="also write each DICOM series' labels as .nii.gz")
    parser.add_argument(
        "--keep-names", action="store_true", help="name image outputs by their input path, not by keyed pseudonym"
    )
    add_inference_options(parser)
    parser.add_argument("--debug", action="store_true", help="full tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    written = run_cli(
        "medseg-predict",
        args.debug,
        lambda: predict(
            args.model, args.input, args.out, args.policy, args.nifti, args.keep_names, **inference_options(args)
        ),
    )
    print(f"wrote masks and overlays to {args.out}" + "".join(f"\n{p}" for p in written))


if __name__ == "__main__":
    main()
