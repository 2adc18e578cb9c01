"""Progressive three-stage schedule vs one constant stage with the same total epochs, on real chest X-rays.

    python benchmarks/progressive_vs_constant.py [--epochs-per-stage 3] [--image-size 128] [--backbone mobilenetv3]

Prints a markdown table of best validation and test Dice for both runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from medseg.config import compose_config
from medseg.training.pipeline import train

REPO = Path(__file__).resolve().parent.parent
CXR = REPO.parent / "shared" / "data" / "cxr_lung"


def run(name: str, overrides: list[str], out: Path) -> dict:
    """Train one configuration and return its metrics plus wall time."""
    base = ["experiment=cxr_lung", f"data.root={CXR}", "callbacks.progress_bar=null"]
    cfg = compose_config([*base, *overrides], out / name)
    start = time.perf_counter()
    _, metrics = train(cfg)
    metrics["wall_s"] = time.perf_counter() - start
    return metrics


def main() -> None:
    """Run both schedules and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs-per-stage", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--backbone", default="mobilenetv3")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "progressive")
    args = parser.parse_args()
    if not (CXR / "images").is_dir():
        raise SystemExit(f"{CXR} not found: this benchmark needs the chest X-ray data set")
    n = args.epochs_per_stage
    common = [f"backbone={args.backbone}", f"data.image_size={args.image_size}"]
    per_stage = [f"stage.stages.{i}.epochs={n}" for i in range(3)]
    progressive = run("progressive", [*common, "stage=progressive", *per_stage], args.out)
    constant = run(
        "constant",
        [
            *common,
            "stage=1",
            f"stage.stages.0.epochs={3 * n}",
            "stage.stages.0.data_fraction=1.0",
            "stage.stages.0.aug_strength=mid",
            "stage.stages.0.name=constant",
        ],
        args.out,
    )
    print(f"\n{args.backbone}, {args.image_size}px, {3 * n} epochs in total, cxr_lung 70/15/15 patient split\n")
    print("| schedule | best val Dice | test Dice | wall time (s) |")
    print("|---|---|---|---|")
    for name, m in [
        ("progressive 1e-4/5e-5/1e-5, 20/60/100%, low/mid/high", progressive),
        ("constant 1e-4, 100%, mid", constant),
    ]:
        val, test = m.get("best/val/dice_mean", float("nan")), m.get("test/dice_mean", float("nan"))
        print(f"| {name} | {val:.4f} | {test:.4f} | {m['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
