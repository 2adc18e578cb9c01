"""Run and sweep reports and model tables.

medseg-report RUN_DIR           report.html: config, curves, per-class test table, worst test cases
medseg-report MULTIRUN_DIR      markdown table of a sweep + PNG plots (Dice vs params, val Dice curves) and
                                report.html with both; a sweep over data.fold also gets mean +- std per
                                configuration across folds
medseg-report --models          params and GFLOPs of the four PSPNets at 512x512
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.evaluation.results import RESULTS_FILE, read_results
from medseg.evaluation.run_page import image_tag, markdown_html, run_report, save_figure, write_page
from medseg.utils.cli import RUN_PLUMBING, run_cli
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


# overrides left out of a fold's configuration: the fold itself and the run plumbing (a resumed fold is the same)
RUN_CONTROL = ("data.fold=", *RUN_PLUMBING)


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
    paths = [save_figure(fig, out_dir / "dice_vs_params.png")]
    fig, ax = plt.subplots(figsize=(5, 4))
    for r in records:
        curve = val_curve(r["run_dir"])
        if curve:
            ax.plot(*zip(*curve, strict=True), marker="o", label=f"{r['job']}: {r['backbone']}")
    ax.set(xlabel="step", ylabel="val mean Dice", title="validation Dice")
    if ax.lines:
        ax.legend(fontsize=8)
    paths.append(save_figure(fig, out_dir / "val_dice_curves.png"))
    return paths


def sweep_report(multirun_dir: Path) -> Path:
    """Print a sweep's table (and fold table), write its plots and report.html; returns the page's path."""
    records = read_results(multirun_dir)
    rows, folds = sweep_table(records), fold_table(records)
    print(rows + (f"\n\n{folds}" if folds else ""))
    plots = plot_sweep(records, multirun_dir)
    sections = [("Sweep", markdown_html(rows))]
    if folds:
        sections.append(("Folds", markdown_html(folds)))
    sections.append(("Plots", "".join(image_tag(p, p.stem) for p in plots)))
    return write_page(multirun_dir / "report.html", f"medseg sweep {multirun_dir.name}", sections)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="medseg-report", description="Report a run or a sweep; list model sizes.")
    parser.add_argument("folder", nargs="?", type=Path, help="a run folder or a multirun (sweep) folder")
    parser.add_argument("--models", action="store_true", help="print params and GFLOPs of the four PSPNets")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--worst", type=int, default=4, help="worst test cases shown on a run's page")
    parser.add_argument("--debug", action="store_true", help="full tracebacks")
    args = parser.parse_args(argv)
    if args.models:
        print(model_table(args.size))
    if args.folder:
        run_cli("medseg-report", args.debug, lambda: print(f"wrote {report(args.folder, args.worst)}"))
    if not (args.models or args.folder):
        parser.error("give a RUN_DIR or MULTIRUN_DIR, --models, or both")


def report(folder: Path, worst: int = 4) -> Path:
    """report.html of a run folder (it holds config.yaml) or of a sweep folder."""
    if (folder / "config.yaml").is_file() and not (folder / RESULTS_FILE).is_file():
        return run_report(folder, worst)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such run or sweep folder")
    return sweep_report(folder)


if __name__ == "__main__":
    main()
