"""Whole-volume inference on CPU, end to end vs network only: PyTorch vs ONNX FP32 vs ONNX INT8, and INT8's Dice
gate per volume.

    python benchmarks/volume_inference.py RUN_DIR --data-root DIR --series DIR [DIR ...] [--volume FILE ...]
        [--threads 2] [--repeats 3]

RUN_DIR: a training run (checkpoints/best.ckpt, split.json) on the data under --data-root. Its checkpoint is
exported to ONNX and quantized to INT8 (calibrated on the run's validation split, medseg-export --int8). End to
end, for a DICOM series: every file decoded, normalised as trained, fed slice by slice with its context stack,
masks mapped back to the source grid, the DICOM SEG and the NIfTI label volume written (medseg-node's path); for
a NIfTI volume the same with the NIfTI written (medseg-predict's path). Network only: the time spent inside the
network calls of the same runs. The ratio is network time / end-to-end time (1.0: nothing but the network).
INT8's gate: per-volume mean Dice over the classes of FP32 and INT8 on the run's validation patients, as
medseg-eval scores them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medseg.deploy.export import export_checkpoint
from medseg.deploy.predict import group_series, predict_volume, segment_dicom_series
from medseg.deploy.predictor import Predictor
from medseg.deploy.quantize import quantize_checkpoint_model
from medseg.deploy.seg import write_nifti, write_seg
from medseg.evaluation.evaluate import evaluate


def timed_predictor(model: Path, threads: int) -> tuple[Predictor, list[float]]:
    """A Predictor whose network calls add their wall time to the returned one-item list."""
    predictor = Predictor(model, threads=threads)
    spent = [0.0]
    run = predictor._run

    def timed(batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        logits = run(batch)
        spent[0] += time.perf_counter() - start
        return logits

    predictor._run = timed
    return predictor, spent


def segment_source(predictor: Predictor, source: Path, out: Path) -> int:
    """Segment one DICOM series folder or NIfTI volume and write its outputs; returns the slices."""
    if source.is_dir():
        [series] = group_series(sorted(source.glob("*.dcm")))
        sources, _, masks = segment_dicom_series(predictor, series, [])
        write_seg(sources, masks, predictor.info.class_names, out)
        write_nifti(sources, masks, out)
        return len(masks)
    return predict_volume(predictor, source, out, "resize", "volume", [])


def measure(model: Path, source: Path, threads: int, repeats: int) -> dict:
    """Median end-to-end seconds of REPEATS runs (after one warm-up), with that run's network seconds."""
    predictor, spent = timed_predictor(model, threads)
    runs = []
    with tempfile.TemporaryDirectory() as out:
        for i in range(repeats + 1):
            spent[0] = 0.0
            start = time.perf_counter()
            slices = segment_source(predictor, source, Path(out) / str(i))
            if i:
                runs.append((time.perf_counter() - start, spent[0]))
    total, network = sorted(runs)[len(runs) // 2]
    return {"slices": slices, "total": total, "network": network}


def volume_dice(model: Path, data_root: Path, split_file: Path) -> dict[str, float]:
    """Per-volume mean Dice over the classes on the run's validation split."""
    with tempfile.TemporaryDirectory() as out:
        rows = evaluate(model, data_root, out, split_file=split_file, split="val", worst=0)
    cases: dict[str, list[float]] = {}
    for row in rows:
        cases.setdefault(row["case"], []).append(row["dice"])
    return {case: float(np.nanmean(values)) for case, values in cases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--series", nargs="*", type=Path, default=[], help="folders of one DICOM series each")
    parser.add_argument("--volume", nargs="*", type=Path, default=[], help="NIfTI image volumes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = args.run / "checkpoints" / "best.ckpt"
    work = Path(tempfile.mkdtemp(prefix="medseg-volume-inference-"))
    fp32, _ = export_checkpoint(checkpoint, work / "model.onnx")
    int8 = quantize_checkpoint_model(checkpoint, fp32, tolerance=1.0, data_root=str(args.data_root)).path
    models = {"PyTorch": checkpoint, "ONNX FP32": fp32, "ONNX INT8": int8}
    print("| model | input | slices | end to end s | slices/s | network-only slices/s | network / end to end |")
    print("|---|---|---|---|---|---|---|")
    for name, model in models.items():
        for source in [*args.series, *args.volume]:
            row = measure(model, source, args.threads, args.repeats)
            print(
                f"| {name} | {source.name} | {row['slices']} | {row['total']:.2f} | {row['slices'] / row['total']:.1f} "
                f"| {row['slices'] / row['network']:.1f} | {row['network'] / row['total']:.2f} |",
                flush=True,
            )
    full, quantized = (volume_dice(m, args.data_root, args.run / "split.json") for m in (fp32, int8))
    drops = [full[case] - quantized[case] for case in full]
    print("\n| volume | FP32 Dice | INT8 Dice | drop |\n|---|---|---|---|")
    for case, drop in zip(full, drops, strict=True):
        print(f"| {case} | {full[case]:.4f} | {quantized[case]:.4f} | {drop:+.4f} |")
    print(f"\nlargest per-volume drop {max(drops):+.4f}, mean {statistics.mean(drops):+.4f}")


if __name__ == "__main__":
    main()
