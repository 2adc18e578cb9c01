"""Site-to-site transfer on real chest X-rays: does the progressive schedule beat constant fine-tuning?

    python benchmarks/site_transfer.py [--image-size 128] [--epochs-per-stage 4] [--seeds 0 1 2]
                                       [--fractions 0.2 0.6 1.0] [--model key=value ...]

Source: Shenzhen (CHNCXR_*, `experiment=cxr_transfer_source`) trained once from random weights.
Target: Montgomery (MCUCXR_*, `experiment=cxr_transfer_target`), 70/15/15 patient split fixed by
data.seed=42 whatever the training seed; every row is tested on the same held-out Montgomery patients.
Rows, at equal epochs (3 x epochs-per-stage): (a) from scratch on Montgomery (AdamW 2e-3, cosine),
(b) the source model as is, (c) source + constant fine-tuning (stage=finetune, 1e-4), (d) source +
the progressive schedule; (a), (c), (d) for each share of the Montgomery training patients
(data.labelled_fraction). Prints markdown tables (mean +- std over seeds, wall time) and writes a PNG.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from hydra.utils import instantiate

from medseg.config import compose_config
from medseg.training.pipeline import load_weights, train

REPO = Path(__file__).resolve().parent.parent
CXR = REPO.parent / "shared" / "data" / "cxr_lung"
METHODS = {
    "scratch": "(a) from scratch",
    "zero_shot": "(b) source model as is",
    "constant": "(c) source + constant fine-tuning",
    "progressive": "(d) source + progressive",
}


def run(experiment: str, overrides: list[str], out: Path) -> dict:
    """Train one configuration; its metrics plus wall time and the best checkpoint."""
    base = [f"experiment={experiment}", f"data.root={CXR}", "callbacks.progress_bar=null", "model.log_images=false"]
    cfg = compose_config([*base, *overrides], out)
    start = time.perf_counter()
    _, metrics = train(cfg)
    metrics["wall_s"] = time.perf_counter() - start
    metrics["best"] = str(out / "checkpoints" / "best.ckpt")
    return metrics


def zero_shot(source: str, common: list[str], out: Path) -> dict:
    """Test Dice of the source checkpoint on the target's held-out patients, without training."""
    import lightning as L

    cfg = compose_config(["experiment=cxr_transfer_target", f"data.root={CXR}", f"init_from={source}", *common], out)
    start = time.perf_counter()
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _recursive_=False)
    load_weights(model, source)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
    (metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)
    return {**metrics, "wall_s": time.perf_counter() - start}


def main() -> None:
    """Train the source once, then every target row for every seed and label share; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs-per-stage", type=int, default=4)
    parser.add_argument("--source-epochs", type=int, default=16)
    parser.add_argument("--source", default=None, help="a source best.ckpt from an earlier run of this script")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.6, 1.0])
    parser.add_argument("--model", nargs="*", default=[], help="extra overrides, e.g. model.net.encoder_depth=4")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "site_transfer")
    args = parser.parse_args()
    if not (CXR / "images").is_dir():
        raise SystemExit(f"{CXR} not found: this benchmark needs the chest X-ray data set")
    n = args.epochs_per_stage
    common = [f"data.image_size={args.image_size}", *args.model]
    if args.source:
        source = {"best": args.source}
    else:
        epochs = f"stage.stages.0.epochs={args.source_epochs}"
        source = run("cxr_transfer_source", [*common, epochs], args.out / "source")
        print(f"source: test Dice (Shenzhen) {source['test/dice_mean']:.4f}, {source['wall_s']:.0f} s", flush=True)
    per_stage = [f"stage.stages.{i}.epochs={n}" for i in range(3)]
    recipes = {
        "scratch": (
            "cxr_lung_scratch",
            ["data.include_regex='^MCUCXR_'", "data.seed=42", f"stage.stages.0.epochs={3 * n}"],
        ),
        "constant": (
            "cxr_transfer_target",
            [f"init_from={source['best']}", "stage=finetune", f"stage.stages.0.epochs={3 * n}"],
        ),
        "progressive": ("cxr_transfer_target", [f"init_from={source['best']}", *per_stage]),
    }
    results: dict[tuple[str, float], list[dict]] = {}
    results[("zero_shot", 1.0)] = [zero_shot(source["best"], common, args.out / "zero_shot")]
    for fraction in sorted(args.fractions, reverse=True):
        for seed in args.seeds:
            for method, (experiment, overrides) in recipes.items():
                name = f"{method}_f{fraction:g}_s{seed}"
                metrics = run(
                    experiment,
                    [*common, *overrides, f"seed={seed}", f"data.labelled_fraction={fraction}"],
                    args.out / name,
                )
                results.setdefault((method, fraction), []).append(metrics)
                print(f"{name}: test Dice {metrics['test/dice_mean']:.4f}, {metrics['wall_s']:.0f} s", flush=True)
    (args.out / "results.json").write_text(
        json.dumps({f"{m}@{f:g}": r for (m, f), r in results.items()}, indent=1, default=str)
    )
    print_tables(results, args)
    plot(results, args.out / "site_transfer.png")


def _stats(runs: list[dict], key: str) -> tuple[float, float]:
    values = [r[key] for r in runs if key in r]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def print_tables(results: dict, args) -> None:
    """The main table (all Montgomery training patients) and the label-efficiency table."""
    n = 3 * args.epochs_per_stage
    print(f"\nMontgomery test Dice (lung), {args.image_size}px, {n} target epochs, seeds {args.seeds}\n")
    print("| method | runs | test Dice | best val Dice | wall s per run |\n|---|---|---|---|---|")
    for method, label in METHODS.items():
        runs = results.get((method, 1.0))
        if not runs:
            continue
        dice, sd = _stats(runs, "test/dice_mean")
        val = "n/a" if method == "zero_shot" else "{:.4f} +- {:.4f}".format(*_stats(runs, "best/val/dice_mean"))
        wall = _stats(runs, "wall_s")[0]
        print(f"| {label} | {len(runs)} | {dice:.4f} +- {sd:.4f} | {val} | {wall:.0f} |")
    print(
        "\n| Montgomery training patients | "
        + " | ".join(METHODS[m] for m in ("scratch", "constant", "progressive"))
        + " |"
    )
    print("|---|---|---|---|")
    for fraction in sorted(args.fractions):
        cells = []
        for method in ("scratch", "constant", "progressive"):
            runs = results.get((method, fraction), [])
            dice, sd = _stats(runs, "test/dice_mean") if runs else (float("nan"), 0.0)
            cells.append(f"{dice:.4f} +- {sd:.4f}")
        print(f"| {fraction:.0%} | " + " | ".join(cells) + " |")


def plot(results: dict, path: Path) -> None:
    """Test Dice against the share of Montgomery training patients, one line per method (mean +- std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for method in ("scratch", "constant", "progressive"):
        points = sorted((f, *_stats(r, "test/dice_mean")) for (m, f), r in results.items() if m == method)
        if points:
            xs, ys, sds = zip(*points, strict=True)
            ax.errorbar([100 * x for x in xs], ys, yerr=sds, marker="o", capsize=3, label=METHODS[method])
    if ("zero_shot", 1.0) in results:
        ax.axhline(
            _stats(results[("zero_shot", 1.0)], "test/dice_mean")[0], ls="--", c="grey", label=METHODS["zero_shot"]
        )
    ax.set(xlabel="Montgomery training patients (%)", ylabel="Montgomery test Dice (lung)", title="site transfer")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
