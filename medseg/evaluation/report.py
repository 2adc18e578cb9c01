"""Sweep reports and model tables.

medseg-report MULTIRUN_DIR      markdown table of a sweep + PNG plots (Dice vs params, val Dice curves);
                                a sweep over data.fold also gets mean +- std per configuration across folds
medseg-report --models          params and GFLOPs of the four PSPNets at 512x512
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.evaluation.results import read_results
from medseg.utils.io import atomic_path
from medseg.utils.sizes import count_params_flops

log = logging.getLogger(__name__)


def model_table(size: int = 512, in_channels: int = 1, num_classes: int = 2) -> str:
    """Markdown table of params and GFLOPs of PSPNet on each backbone: the default network, then the full encoder."""
    from medseg.models import PSPNet
    from medseg.models.encoder import BACKBONES

    encoders = {3: "first 3 stages (default)", None: "all stages (`encoder_depth=null`)"}
    lines = [f"| backbone | encoder | params (M) | GFLOPs at {size}x{size} | GMACs |", "|---|---|---|---|---|"]
    for name in BACKBONES:
        for depth, label in encoders.items():
            net = PSPNet(name, in_channels, num_classes, decoder_channels=128, output_stride=8, encoder_depth=depth)
            params, gflops = count_params_flops(net, in_channels, (size, size))
            lines.append(f"| {name} | {label} | {params / 1e6:.2f} | {gflops:.2f} | {gflops / 2:.2f} |")
    return "\n".join(lines)


def sweep_table(records: Sequence[dict]) -> str:
    """Markdown table of a sweep."""
    lines = [
        "| job | backbone | params (M) | GFLOPs | val Dice | test Dice | train time (s) | img/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['job']} | {r['backbone']} | {r['params'] / 1e6:.2f} | {r['gflops']:.2f} | {_fmt(r.get('val_dice'))} "
            f"| {_fmt(r.get('test_dice'))} | {r['train_time_s']:.1f} | {r['images_per_s']:.1f} |"
        )
    return "\n".join(lines)


# overrides left out of a fold's configuration: the fold itself, and what drives or logs a run without changing
# what it trains (a resumed fold is the same configuration)
RUN_CONTROL = ("data.fold=", "ckpt_path=", "hydra.", "callbacks.progress_bar=", "model.log_images=", "logger")


def fold_table(records: Sequence[dict]) -> str:
    """Mean +- std of val and test Dice across the folds (data.fold=k) of each configuration; '' without folds.

    Run-control overrides (resume checkpoint, progress bar, logging) do not split a configuration; a fold run
    more than once counts once, with its latest record."""
    groups: dict[str, dict[str, dict]] = {}
    for r in records:
        overrides = r.get("overrides", [])
        fold = next((o for o in overrides if o.startswith("data.fold=")), None)
        if fold is None:
            continue
        key = " ".join(sorted(o for o in overrides if not o.startswith(RUN_CONTROL))) or "(defaults)"
        groups.setdefault(key, {})[fold] = r
    if not groups:
        return ""
    lines = ["| configuration | folds | val Dice | test Dice |", "|---|---|---|---|"]
    for key, folds in groups.items():
        runs, cells = list(folds.values()), []
        for metric in ("val_dice", "test_dice"):
            values = np.array([r[metric] for r in runs if r.get(metric) is not None], dtype=float)
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            cells.append(f"{values.mean():.4f} +- {std:.4f}" if len(values) else "n/a")
        lines.append(f"| {key} | {len(runs)} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def val_curve(run_dir: str | Path, tag: str = "val/dice_mean") -> list[tuple[int, float]]:
    """(step, value) of a scalar (validation mean Dice unless TAG says) read from a run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(run_dir) / "tensorboard"
    if not folder.is_dir():  # e.g. fast_dev_run, which logs nothing
        return []
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def plot_sweep(records: Sequence[dict], out_dir: str | Path) -> list[Path]:
    """Write dice_vs_params.png and val_dice_curves.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    fig, ax = plt.subplots(figsize=(5, 4))
    for r in records:
        ax.scatter(r["params"] / 1e6, r.get("val_dice") or 0.0)
        ax.annotate(r["backbone"], (r["params"] / 1e6, r.get("val_dice") or 0.0), fontsize=8)
    ax.set(xlabel="parameters (M)", ylabel="val mean Dice", title="Dice vs model size")
    paths = [_save(fig, out_dir / "dice_vs_params.png")]
    fig, ax = plt.subplots(figsize=(5, 4))
    for r in records:
        curve = val_curve(r["run_dir"])
        if curve:
            ax.plot(*zip(*curve, strict=True), marker="o", label=f"{r['job']}: {r['backbone']}")
    ax.set(xlabel="step", ylabel="val mean Dice", title="validation Dice")
    if ax.lines:
        ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "val_dice_curves.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="medseg-report", description="Summarise a sweep or list model sizes.")
    parser.add_argument("multirun_dir", nargs="?", type=Path)
    parser.add_argument("--models", action="store_true", help="print params and GFLOPs of the four PSPNets")
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)
    if args.models:
        print(model_table(args.size))
    if args.multirun_dir:
        records = read_results(args.multirun_dir)
        print(sweep_table(records))
        folds = fold_table(records)
        if folds:
            print(f"\n{folds}")
        for path in plot_sweep(records, args.multirun_dir):
            print(f"wrote {path}")
    if not (args.models or args.multirun_dir):
        parser.error("give a MULTIRUN_DIR, --models, or both")


if __name__ == "__main__":
    main()
