"""Data at scale: in-memory vs prepared + streamed (litdata) training data, N distinct synthetic slices.

    python benchmarks/scale.py [--sizes 1000 5000 20000] [--steps 150] [--work /tmp/medseg-scale]
    python benchmarks/scale.py --gpu-loader PREPARED [--steps 300]   # on a CUDA machine

For each N: prepare time with 1 and 2 workers, then for each data path a fresh training process
(mobilenetv3, output stride 32, 256x256, batch 8) that reports the time from process start to the
first training step, peak RSS, and steady training img/s over --steps steps. Prints markdown tables
and an estimate for 1,000,000 slices from the measured per-slice costs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SIZE = 256
PER_PATIENT = 10
DATA = ["layout=folder", f"image_size={SIZE}", "class_names=[background,foreground]", "mask_mapping={255: 1}"]
REGEX = r"patient_regex=^(P\d+)_"


def generate(root: Path, n: int) -> None:
    """N distinct 256x256 PNG slices (noise, gradient and ellipses drawn from the slice's own seed) with masks."""
    done = root / f".done-{n}"
    if done.is_file():
        return
    shutil.rmtree(root, ignore_errors=True)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(n):
        rng = np.random.default_rng(i)
        image = (rng.normal(90, 20, (SIZE, SIZE)) + xx * rng.uniform(0, 0.3)).clip(0, 255).astype(np.uint8)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        for _ in range(2):
            center = (int(rng.integers(40, 216)), int(rng.integers(40, 216)))
            axes = (int(rng.integers(15, 60)), int(rng.integers(15, 60)))
            cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        image[mask > 0] = np.clip(image[mask > 0].astype(int) + int(rng.integers(40, 90)), 0, 255)
        name = f"P{i // PER_PATIENT:06d}_{i % PER_PATIENT}.png"
        cv2.imwrite(str(root / "images" / name), image)
        cv2.imwrite(str(root / "masks" / name), mask)
    done.touch()


def prepare_seconds(root: Path, out: Path, workers: int) -> float:
    """Wall time of `medseg-prepare` into a fresh OUT."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "medseg.data.prepare", str(root), str(out), "--workers", str(workers), *DATA, REGEX],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def data_args(mode: str, root: Path) -> list[str]:
    """The data overrides of the synthetic slices, streamed or in memory."""
    if mode == "stream":
        return ["data=stream", f"data.root={root}"]
    folder = ["data=folder", f"data.root={root}", f"data.image_size={SIZE}", r"data.patient_regex='^(P\d+)_'"]
    return [*folder, "data.decode_cache=null", "data.split_file=null"]


def train_run(
    mode: str,
    root: Path,
    steps: int,
    extra: tuple[str, ...] = ("data.num_workers=0",),
    data: list[str] | None = None,
    model: tuple[str, ...] = ("model.net.encoder_depth=null", "model.net.output_stride=32"),
) -> dict:
    """One training process (DATA: its data overrides, else the synthetic slices'): seconds to first step,
    peak RSS, steady img/s."""
    launched = time.time()
    args = [
        *(data if data is not None else data_args(mode, root)),
        *model,
        "model.log_images=false",
        "test=false",
        "logger=[]",
        "callbacks=[]",
        *extra,
        f"+trainer.max_steps={steps + 10}",
        "stage.stages.0.epochs=1000",
        "trainer.limit_val_batches=0",
        "+trainer.enable_checkpointing=false",
        "+trainer.enable_progress_bar=false",
        "trainer.deterministic=false",
    ]
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "_child", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("SCALE ")]
    if not lines:
        raise RuntimeError(out.stderr[-3000:])
    result = json.loads(lines[-1][6:])
    result["first_step_s"] = result.pop("first_step_at") - launched
    return result


def child(overrides: list[str]) -> None:
    """Inside the timed process: compose, train, report."""
    import lightning as L
    from hydra.utils import instantiate

    from medseg.config import compose_config

    marks: dict = {}

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, index) -> None:
            if "first_step_at" not in marks:
                marks["first_step_at"] = time.time()
            if trainer.global_step == 10:
                marks["t10"] = time.perf_counter()

        def on_train_end(self, trainer, module) -> None:
            marks["steps"] = trainer.global_step - 10
            marks["t_end"] = time.perf_counter()

    cfg = compose_config(overrides, "/tmp/medseg-scale-run")
    L.seed_everything(0)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _recursive_=False)
    trainer = instantiate(cfg.trainer, callbacks=[Clock()], logger=False)
    trainer.fit(model, datamodule=datamodule)
    images = marks["steps"] * cfg.data.batch_size
    report = dict(
        first_step_at=marks["first_step_at"],
        peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        img_per_s=images / (marks["t_end"] - marks["t10"]),
    )
    print("SCALE " + json.dumps(report), flush=True)


def loader_rate(root: Path, batches: int = 100) -> float:
    """Images per second one process streams and augments (mid strength), without a model."""
    from medseg.data.stream import StreamDataModule

    dm = StreamDataModule(str(root), num_workers=0)
    dm.set_stage(aug_strength="mid")
    loader = dm.train_dataloader()
    start, count = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        count += len(batch["image"])
        if i + 1 >= batches:
            break
    return count / (time.perf_counter() - start)


def gpu_utilisation(samples: list[float], stop) -> None:
    """Sample nvidia-smi's GPU utilisation every 0.5 s until STOP is set."""
    while not stop.is_set():
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode == 0 and out.stdout.strip():
            samples.append(float(out.stdout.split()[0]))
        stop.wait(0.5)


def gpu_loader(prepared: Path, steps: int) -> None:
    """trainer=gpu over a prepared folder: img/s and mean GPU utilisation with 0 and 8 loader workers."""
    import threading

    print("| loader workers | train img/s | mean GPU utilisation % |\n|---|---|---|")
    for workers in (0, 8):
        samples: list[float] = []
        stop = threading.Event()
        sampler = threading.Thread(target=gpu_utilisation, args=(samples, stop), daemon=True)
        sampler.start()
        run = train_run("stream", prepared, steps, ("trainer=gpu", f"data.num_workers={workers}", "data.batch_size=32"))
        stop.set()
        sampler.join()
        util = sum(samples) / len(samples) if samples else float("nan")
        print(f"| {workers} | {run['img_per_s']:.0f} | {util:.0f} |")


def main() -> None:
    """Run the benchmark and print the tables."""
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2:])
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--gpu-loader":
        steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 300
        gpu_loader(Path(sys.argv[2]), steps)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--work", type=Path, default=Path("/tmp/medseg-scale"))
    args = parser.parse_args()
    rows, per_slice = [], {}
    for n in args.sizes:
        root, out = args.work / f"src-{n}", args.work / f"prepared-{n}"
        t = time.perf_counter()
        generate(root, n)
        print(f"N={n}: generated in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        p1 = prepare_seconds(root, out, 1)
        p2 = prepare_seconds(root, out, 2)
        chunk_bytes = sum(p.stat().st_size for p in out.rglob("*.bin"))
        per_slice[n] = dict(prepare_s=p1 / n, bytes=chunk_bytes / n)
        for mode, data_root in (("in-memory", root), ("stream", out)):
            run = train_run(mode, data_root, args.steps)
            rows.append(dict(n=n, mode=mode, p1=p1, p2=p2, **run))
            print(f"N={n} {mode}: {run}", file=sys.stderr)
        per_slice[n]["loader_img_s"] = loader_rate(out)
    print(f"\nmobilenetv3 OS32, {SIZE}x{SIZE}, batch 8, {os.cpu_count()} CPU cores, {args.steps} timed steps\n")
    print(
        "| N slices | data | prepare 1 worker s | prepare 2 workers s | 2w/1w speed-up | first step s "
        "| peak RSS GB | train img/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        prep = f"{r['p1']:.0f} | {r['p2']:.0f} | {r['p1'] / r['p2']:.2f}x" if r["mode"] == "stream" else "- | - | -"
        print(
            f"| {r['n']} | {r['mode']} | {prep} | {r['first_step_s']:.1f} | {r['peak_rss_gb']:.2f} "
            f"| {r['img_per_s']:.1f} |"
        )
    largest = max(per_slice)
    cost = per_slice[largest]
    million = 1_000_000
    print(
        f"\nPer slice at N={largest}: prepare {cost['prepare_s'] * 1e3:.1f} ms (1 worker), "
        f"{cost['bytes'] / 1e3:.0f} kB stored, loader {cost['loader_img_s']:.0f} img/s per worker process."
    )
    print(
        f"1,000,000 slices: {cost['bytes'] * million / 1e9:.0f} GB of chunks; prepare "
        f"{cost['prepare_s'] * million / 3600:.1f} worker-hours."
    )


if __name__ == "__main__":
    main()
