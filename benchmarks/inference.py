"""CPU inference latency: PyTorch eager vs ONNX Runtime FP32 vs ONNX Runtime INT8, per backbone.

    python benchmarks/inference.py [--size 512] [--threads 2] [--repeats 20] [--backbones mobilenetv3 resnet18]

Batch 1. INT8 is calibrated on demo-dataset slices. Prints a markdown table with the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from medseg.data.datamodule import SegmentationDataModule
from medseg.deploy.export import export_net
from medseg.deploy.info import ModelInfo
from medseg.deploy.predictor import Predictor
from medseg.deploy.quantize import quantize_onnx
from medseg.models import PSPNet
from medseg.models.encoder import BACKBONES


def median_ms(fn, x, repeats: int) -> float:
    """Median wall time of FN(X) in milliseconds after two warm-up calls."""
    for _ in range(2):
        fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def calibration_images(size: int, count: int = 8) -> list[np.ndarray]:
    """Demo-dataset validation slices resized to SIZE, as [1, 1, H, W] float32 batches."""
    dm = SegmentationDataModule(image_size=size)
    dm.setup("fit")
    ds = dm.dataset("train")
    images = [ds.load(i)[0] for i in range(0, len(ds), max(1, len(ds) // count))][:count]
    return [cv2.resize(im, (size, size)).reshape(1, 1, size, size).astype(np.float32) for im in images]


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    calibration = calibration_images(args.size)
    x = calibration[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backbones:
            torch.manual_seed(0)
            net = PSPNet(name, in_channels=1, num_classes=3).eval()
            info = ModelInfo(class_names=["background", "organ", "lesion"], in_channels=1, image_size=[args.size] * 2)
            fp32 = export_net(net, info, Path(tmp) / f"{name}.onnx")
            int8 = quantize_onnx(fp32, Path(tmp) / f"{name}.int8.onnx", calibration)

            def eager(batch, net=net):
                with torch.inference_mode():
                    return net(torch.from_numpy(batch))

            ort32, ort8 = Predictor(fp32, args.threads), Predictor(int8, args.threads)
            t_eager = median_ms(eager, x, args.repeats)
            t32 = median_ms(ort32.logits, x, args.repeats)
            t8 = median_ms(ort8.logits, x, args.repeats)
            rows.append((name, t_eager, t32, t8, fp32.stat().st_size / 1e6, int8.stat().st_size / 1e6))
    print(f"\nbatch 1, {args.size}x{args.size}, {args.threads} threads, median of {args.repeats}\n")
    print("| backbone | eager ms | ORT FP32 ms | FP32/eager | ORT INT8 ms | INT8 speed-up | FP32 MB | INT8 MB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, te, t32, t8, m32, m8 in rows:
        print(f"| {name} | {te:.1f} | {t32:.1f} | {t32 / te:.2f} | {t8:.1f} | {t32 / t8:.2f}x | {m32:.1f} | {m8:.1f} |")


if __name__ == "__main__":
    main()
