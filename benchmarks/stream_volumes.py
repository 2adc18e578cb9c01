"""Streaming real CT volumes: medseg-prepare of hn_ct (workers, stored type, chunk compression), then training
img/s, time to the first step and peak RSS, streamed vs in memory.

    python benchmarks/stream_volumes.py [--src ../shared/data/hn_ct] [--work /tmp/medseg-stream-volumes] [--steps 150]
        [--tables prepare train volumes] [--volumes 50 100 203]

The data settings are experiment=hn_ct's (nnU-Net layout, CT clipped and z-scored with the training
foreground's statistics, one neighbouring slice on each side, 128x128). Prepare: wall time of the whole
`medseg-prepare` command and the bytes of its chunks, for float16 and uint8 images, without and with
litdata's zstd chunk compression. Training: the experiment's network, batch 8, `data.num_workers=0`,
one fresh process per data path (the in-memory one decodes every volume first, without a decode cache).
Volumes: peak RSS and img/s of the same training on the first N cases (zstd chunks, the default), streamed
and in memory, to show what grows with the number of volumes.
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
DATA = ["layout=nnunet", "normalize=ct", "context_slices=1", "image_size=128", "missing_labels=missing_labels.json"]
MODEL = ("model.net.encoder_depth=3", "model.net.decoder_channels=256")
VARIANTS = [("float16", None, 1), ("float16", None, 2), ("uint8", None, 2), ("float16", "zstd", 2)]
VARIANTS += [("uint8", "zstd", 2)]


def prepare(src: Path, out: Path, dtype: str, compression: str | None, workers: int) -> float:
    """Wall time of medseg-prepare into a fresh OUT."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "medseg.data.prepare", str(src), str(out), "--workers", str(workers)]
    command += ["--dtype", dtype, "--compression", compression or "none", *DATA]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - start


def stored_bytes(folder: Path, pattern: str) -> int:
    """Bytes of the files under FOLDER matching PATTERN."""
    return sum(p.stat().st_size for p in folder.rglob(pattern))


def case_subset(src: Path, cases: int, folder: Path) -> Path:
    """An nnU-Net root under FOLDER holding the first CASES cases of SRC (links, the sources untouched)."""
    shutil.rmtree(folder, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
        for path in sorted((src / sub).glob("*.nii*"))[:cases]:
            (folder / sub / path.name).symlink_to(path)
    for name in ("dataset.json", "missing_labels.json"):
        if (src / name).is_file():
            (folder / name).symlink_to(src / name)
    return folder


def in_memory_args(root: Path) -> list[str]:
    """The data overrides of training on ROOT in memory with the prepared folders' settings."""
    data = ["data=nnunet", f"data.root={root}", *(f"data.{setting}" for setting in DATA[1:])]
    return [*data, "data.decode_cache=null", "data.split_file=null"]


def prepare_table(src: Path, work: Path, sources: int) -> None:
    """Prepare time and chunk bytes per stored type, compression and workers."""
    print("| images | compression | workers | prepare s | chunks MB | chunks / sources |")
    print("|---|---|---|---|---|---|")
    for dtype, compression, workers in VARIANTS:
        out = work / f"{dtype}-{compression or 'raw'}-w{workers}"
        seconds = prepare(src, out, dtype, compression, workers)
        size = stored_bytes(out, "*.bin")
        row = f"| {dtype} | {compression or '-'} | {workers} | {seconds:.0f} | {size / 1e6:.0f}"
        print(f"{row} | {size / sources:.1f}x |", flush=True)


def train_table(src: Path, work: Path, steps: int) -> None:
    """First step, peak RSS and img/s: raw float16 chunks streamed vs every volume in memory."""
    streamed = work / "float16-raw-w2"
    if not (streamed / "medseg.json").is_file():
        prepare(src, streamed, "float16", None, 2)
    print("\n| data | first step s | peak RSS GB | train img/s |\n|---|---|---|---|")
    for name, data in (
        ("stream (float16)", ["data=stream", f"data.root={streamed}"]),
        ("in memory", in_memory_args(src)),
    ):
        run = train_run(name, streamed, steps, data=data, model=MODEL)
        print(f"| {name} | {run['first_step_s']:.1f} | {run['peak_rss_gb']:.2f} | {run['img_per_s']:.1f} |", flush=True)


def volumes_table(src: Path, work: Path, steps: int, counts: list[int]) -> None:
    """Peak RSS and img/s against the number of volumes, streamed (zstd chunks) and in memory."""
    print("\n| volumes | data | prepare s | first step s | peak RSS GB | train img/s |\n|---|---|---|---|---|---|")
    for cases in counts:
        root = case_subset(src, cases, work / f"cases{cases}")
        out = work / f"cases{cases}-zstd"
        seconds = prepare(root, out, "float16", "zstd", 2)
        runs = {"stream (zstd)": ["data=stream", f"data.root={out}"], "in memory": in_memory_args(root)}
        for name, data in runs.items():
            run = train_run(name, out, steps, data=data, model=MODEL)
            cells = f"{run['first_step_s']:.1f} | {run['peak_rss_gb']:.2f} | {run['img_per_s']:.1f}"
            print(f"| {cases} | {name} | {seconds if name.startswith('stream') else 0:.0f} | {cells} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO.parent / "shared" / "data" / "hn_ct")
    parser.add_argument("--work", type=Path, default=Path("/tmp/medseg-stream-volumes"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--tables", nargs="+", choices=["prepare", "train", "volumes"], default=["prepare", "train"])
    parser.add_argument("--volumes", nargs="+", type=int, default=[50, 100, 203], help="cases per volumes row")
    args = parser.parse_args()
    sources = stored_bytes(args.src / "imagesTr", "*.nii*") + stored_bytes(args.src / "labelsTr", "*.nii*")
    print(f"sources: {sources / 1e6:.0f} MB of NIfTI\n")
    if "prepare" in args.tables:
        prepare_table(args.src, args.work, sources)
    if "train" in args.tables:
        train_table(args.src, args.work, args.steps)
    if "volumes" in args.tables:
        volumes_table(args.src, args.work, args.steps, args.volumes)


if __name__ == "__main__":
    main()
