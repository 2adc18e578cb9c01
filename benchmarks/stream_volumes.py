"""Streaming real CT volumes: medseg-prepare of hn_ct (workers, stored type, chunk compression), then training
img/s, time to the first step and peak RSS, streamed vs in memory.

    python benchmarks/stream_volumes.py [--src ../shared/data/hn_ct] [--work /tmp/medseg-stream-volumes] [--steps 150]

The data settings are experiment=hn_ct's (nnU-Net layout, CT clipped and z-scored with the training
foreground's statistics, one neighbouring slice on each side, 128x128). Prepare: wall time of the whole
`medseg-prepare` command and the bytes of its chunks, for float16 and uint8 images, without and with
litdata's zstd chunk compression. Training: the experiment's network, batch 8, `data.num_workers=0`,
one fresh process per data path (the in-memory one decodes every volume first, without a decode cache).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from scale import train_run  # noqa: E402 - the benchmarks folder is not a package

REPO = Path(__file__).resolve().parent.parent
DATA = ["layout=nnunet", "normalize=ct", "context_slices=1", "image_size=128"]
MODEL = ("model.net.encoder_depth=3", "model.net.decoder_channels=256")
VARIANTS = [("float16", None, 1), ("float16", None, 2), ("uint8", None, 2), ("float16", "zstd", 2)]
VARIANTS += [("uint8", "zstd", 2)]


def prepare(src: Path, out: Path, dtype: str, compression: str | None, workers: int) -> float:
    """Wall time of medseg-prepare into a fresh OUT."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "medseg.data.prepare", str(src), str(out), "--workers", str(workers)]
    command += ["--dtype", dtype, *(["--compression", compression] if compression else []), *DATA]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - start


def stored_bytes(folder: Path, pattern: str) -> int:
    """Bytes of the files under FOLDER matching PATTERN."""
    return sum(p.stat().st_size for p in folder.rglob(pattern))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO.parent / "shared" / "data" / "hn_ct")
    parser.add_argument("--work", type=Path, default=Path("/tmp/medseg-stream-volumes"))
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    sources = stored_bytes(args.src / "imagesTr", "*.nii*") + stored_bytes(args.src / "labelsTr", "*.nii*")
    print(f"sources: {sources / 1e6:.0f} MB of NIfTI\n")
    print("| images | compression | workers | prepare s | chunks MB | chunks / sources |")
    print("|---|---|---|---|---|---|")
    for dtype, compression, workers in VARIANTS:
        out = args.work / f"{dtype}-{compression or 'raw'}-w{workers}"
        seconds = prepare(args.src, out, dtype, compression, workers)
        size = stored_bytes(out, "*.bin")
        row = f"| {dtype} | {compression or '-'} | {workers} | {seconds:.0f} | {size / 1e6:.0f}"
        print(f"{row} | {size / sources:.1f}x |", flush=True)
    streamed = args.work / "float16-raw-w2"
    in_memory = ["data=nnunet", f"data.root={args.src}", *(f"data.{setting}" for setting in DATA[1:])]
    in_memory += ["data.decode_cache=null", "data.split_file=null"]
    print("\n| data | first step s | peak RSS GB | train img/s |\n|---|---|---|---|")
    for name, data in (("stream (float16)", ["data=stream", f"data.root={streamed}"]), ("in memory", in_memory)):
        run = train_run(name, streamed, args.steps, data=data, model=MODEL)
        print(f"| {name} | {run['first_step_s']:.1f} | {run['peak_rss_gb']:.2f} | {run['img_per_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
