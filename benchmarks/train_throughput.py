"""Training throughput: medseg PSPNet vs segmentation_models_pytorch PSPNet, model-only and end to end.

    pip install segmentation-models-pytorch   # benchmark-only
    python benchmarks/train_throughput.py [--sizes 256 512] [--backbones ...] [--steps 5] [--output-stride 32]

For each backbone and size, batch 8, 2 threads: model-only img/s (forward + backward + AdamW step
on tensors in memory) for medseg (channels-last, as it trains) and for smp's PSPNet (as shipped, and
channels-last) on the same timm encoder at the same output stride (smp's PSPNet has no dilation, so
both use the full encoder at stride 32 by default), and
end-to-end img/s (the real data module on the demo DICOM dataset, decode cache warm, augmentation
mid, the configured workers). Then the data-only epoch times (decoding vs cached) and the peak RSS of
a 512x512, batch 8 mobilenetv3 training run with and without gradient checkpointing and bf16 autocast.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from smp_reference import smp_pspnet

from medseg.data.datamodule import SegmentationDataModule
from medseg.losses import HybridLoss
from medseg.models import PSPNet
from medseg.models.encoder import BACKBONES

BATCH = 8
# smp's PSPNet on the full encoder (stride 32, as medseg at --output-stride 32) with medseg's decoder width.
SMP_SAME_STRIDE = dict(encoder_depth=5, psp_out_channels=128, upsampling=32)


def step_fn(net: torch.nn.Module, channels_last: bool = False):
    """One optimisation step closure over NET (NHWC weights and inputs with CHANNELS_LAST, as medseg trains)."""
    loss_fn = HybridLoss()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def step(images: torch.Tensor, masks: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(images.contiguous(memory_format=layout)), masks).backward()
        optimizer.step()

    return step


def images_per_s(step, batches, steps: int) -> float:
    """Training images per second over STEPS steps after one warm-up step."""
    iterator = iter(batches)
    step(*next(iterator))
    start, seen = time.perf_counter(), 0
    for _ in range(steps):
        images, masks = next(iterator)
        step(images, masks)
        seen += len(images)
    return seen / (time.perf_counter() - start)


def repeat(batch):
    """An endless iterator over one in-memory batch."""
    while True:
        yield batch


def loader_batches(dm: SegmentationDataModule):
    """An endless iterator over training batches from the data module."""
    while True:
        for batch in dm.train_dataloader():
            yield batch["image"], batch["mask"]


def rss_child(size: int, steps: int, checkpointing: bool, bf16: bool) -> None:
    """Train mobilenetv3 (output stride 8, NHWC) for STEPS steps and print this process's peak RSS in MB."""
    torch.set_num_threads(2)
    net = PSPNet("mobilenetv3", 1, 3, output_stride=8, decoder_channels=128, grad_checkpointing=checkpointing)
    step = step_fn(net, channels_last=True)
    images, masks = torch.rand(BATCH, 1, size, size), torch.randint(0, 3, (BATCH, size, size))
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # what trainer.precision=bf16-mixed does
            step(images, masks)
    # VmHWM starts afresh at exec; ru_maxrss would include the parent's size at fork.
    print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024)


def peak_rss_mb(size: int, steps: int, checkpointing: bool, bf16: bool = False) -> float:
    """Peak RSS (MB) of a separate process training mobilenetv3 at SIZE, batch 8, output stride 8."""
    code = f"import train_throughput as t; t.rss_child({size}, {steps}, {checkpointing}, {bf16})"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
    )
    return float(out.stdout.strip().splitlines()[-1])


def epoch_seconds(size: int) -> tuple[float, float]:
    """Data-only epoch time on the demo DICOM data: first epoch (decoding) and second (cached)."""
    dm = SegmentationDataModule(image_size=size, batch_size=BATCH, preload=False)
    dm.set_stage(aug_strength="mid")
    dm.setup("fit")
    times = []
    for _ in range(2):
        start = time.perf_counter()
        for _ in dm.train_dataloader():
            pass
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--output-stride", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows, steps = [], args.steps
    for size in args.sizes:
        dm = SegmentationDataModule(image_size=size, batch_size=BATCH, num_workers=args.workers)
        dm.set_stage(aug_strength="mid")
        dm.setup("fit")
        batch, classes = next(loader_batches(dm)), dm.num_classes
        for name in args.backbones:
            torch.manual_seed(0)
            ours = PSPNet(name, 1, classes, output_stride=args.output_stride, decoder_channels=128)
            model_only = images_per_s(step_fn(ours, True), repeat(batch), args.steps)
            end_to_end = images_per_s(step_fn(ours, True), loader_batches(dm), args.steps)
            smp = [
                images_per_s(step_fn(smp_pspnet(name, 1, classes, **SMP_SAME_STRIDE), nhwc), repeat(batch), steps)
                for nhwc in (False, True)
            ]
            rows.append((name, size, model_only, *smp, end_to_end))
            print(f"{name} {size}: ours {model_only:.1f}, smp {smp}, end-to-end {end_to_end:.1f}", file=sys.stderr)
    print(
        f"\nbatch {BATCH}, 2 threads, output stride {args.output_stride}, {args.steps} timed steps, "
        f"data workers {args.workers}\n"
    )
    print(
        "| backbone | size | medseg img/s | smp img/s | medseg/smp | smp NHWC img/s | medseg/smp NHWC "
        "| end-to-end img/s | end-to-end/model-only |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, size, ours, ref, ref_nhwc, e2e in rows:
        print(
            f"| {name} | {size} | {ours:.2f} | {ref:.2f} | {ours / ref:.2f} | {ref_nhwc:.2f} | {ours / ref_nhwc:.2f} "
            f"| {e2e:.2f} | {e2e / ours:.2f} |"
        )
    for size in args.sizes:
        first, cached = epoch_seconds(size)
        print(
            f"\ndata epoch at {size}: first (decoding DICOM) {first:.2f} s, cached {cached:.2f} s, "
            f"ratio {cached / first:.2f}"
        )
    for checkpointing, bf16 in ((False, False), (True, False), (False, True), (True, True)):
        rss = peak_rss_mb(512, 2, checkpointing, bf16)
        print(
            f"peak RSS, mobilenetv3 512x512 batch 8 output stride 8, grad_checkpointing={checkpointing}, "
            f"bf16 autocast={bf16}: {rss:.0f} MB"
        )
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
