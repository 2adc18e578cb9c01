"""Segment DICOM files/series or PNG/JPEG images with a checkpoint or ONNX model.

    medseg-predict MODEL [MODEL ...] INPUT --out DIR [--policy resize|sliding] [--nifti] [--tta hflip]

Writes per slice a class-index mask PNG (with a colour palette) and an overlay PNG; for DICOM input
also one DICOM SEG per series that references the source instances (and NIfTI with --nifti).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from medseg.data.decode import load_dicom_frames, load_image, model_input
from medseg.data.geometry import assemble_series
from medseg.data.index import IMAGE_SUFFIXES, Sample, slice_ref
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


@dataclass
class InputSeries:
    """One series to segment: its key (SeriesInstanceUID, #k per extra orientation), its files with their
    headers in order along the normal, and its frames in that order."""

    key: str
    items: list[tuple[Path, pydicom.Dataset]]
    frames: list[tuple[Path, int]]


def group_series(files: Sequence[Path], skipped: list | None = None) -> list[InputSeries]:
    """DICOM files as series by the training rules (medseg.data.geometry: UID and orientation, sorted along the
    normal, multi-frame included; duplicates and gaps refused); unreadable files and refused series go to
    SKIPPED."""
    headers: dict[Path, pydicom.Dataset] = {}
    refs = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # not DICOM, truncated
            _skip(skipped, path, f"not a readable DICOM file ({type(exc).__name__})")
            continue
        headers[path] = ds
        refs += [slice_ref(ds, path, frame) for frame in range(int(ds.get("NumberOfFrames", 1) or 1))]

    def refused(series, error: ValueError) -> None:
        _skip(skipped, series.slices[0].path, str(error))

    out = []
    for series in assemble_series(refs, refused):
        paths = list(dict.fromkeys(ref.path for ref in series.slices))
        out.append(
            InputSeries(series.key, [(p, headers[p]) for p in paths], [(r.path, r.frame) for r in series.slices])
        )
    return out


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
    for series in group_series(dicoms, skipped):
        predicted += predict_series(predictor, series, out, policy, nifti, skipped, written)
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
    predictor: Predictor, series: InputSeries, skipped: list, policy: str = "resize", name: str = "series"
) -> tuple[list[Path], list[np.ndarray], list[np.ndarray]]:
    """(source files, model inputs, masks) of one series: each file decoded once, its frames normalised as the
    model was trained and fed in order along the normal with their context stacks; inputs and masks come back in
    the files' own order (file, then frame), as SEG and NIfTI writers take them. Unreadable files go to SKIPPED."""
    info = predictor.info
    scheme = predictor.intensity.scheme(str(series.items[0][1].get("Modality", "")), "dicom")
    decoded: dict[tuple[Path, int], tuple[np.ndarray, object]] = {}
    sources: list[Path] = []
    for path, _ in progress(series.items, len(series.items), name):
        try:
            frames = load_dicom_frames(path, info.in_channels, info.window, raw=scheme != "window")
        except ValueError as exc:  # no pixel data, undecodable
            _skip(skipped, path, str(exc).split(": ", 1)[-1])
            continue
        decoded.update({(path, meta.frame): (image, meta) for image, meta in frames})
        sources.append(path)
    if not sources:
        return [], [], []
    order = [key for key in series.frames if key in decoded]
    images = [decoded[key][0] for key in order]
    images = normalise_series(images, scheme, predictor.intensity) if scheme != "window" else images
    masks = predictor.segment_series(images, policy, [decoded[key][1].pixel_spacing for key in order])
    rank = {path: i for i, path in enumerate(sources)}
    stored = sorted(range(len(order)), key=lambda i: (rank[order[i][0]], order[i][1]))
    return sources, [images[i] for i in stored], [masks[i] for i in stored]


def predict_series(
    predictor: Predictor,
    series: InputSeries,
    out: Path,
    policy: str,
    nifti: bool,
    skipped: list,
    written: list[Path],
) -> int:
    """Segment every frame of one sorted series; masks, overlays, its SEG (and NIfTI) go to OUT and WRITTEN.
    Returns the number of slices predicted."""
    name = pseudonym(series.key)
    sources, images, masks = segment_dicom_series(predictor, series, skipped, policy, f"series {name}")
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
