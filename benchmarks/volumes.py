"""CT and MR volumes: per-volume Dice, HD95 and NSD per organ, medseg 2-D vs 2.5-D vs smp's PSPNet, same budget.

    pip install segmentation-models-pytorch   # for the smp rows only
    python benchmarks/volumes.py chaos_mr [--folds 0 1 2 3 4] [--models 2d k1 k2 smp] [--epochs N]
    python benchmarks/volumes.py hn_ct [--source ../shared/data/hn_ct] [--seeds 0 1 2] [--models ...] [--epochs N]

chaos_mr: `experiment=chaos_mr` (DICOM series in memory, MR z-scored per series), 5-fold patient
cross-validation over the 15 patients; each fold's 3 validation patients are scored. hn_ct:
`experiment=hn_ct` (`data=stream` from a `medseg-prepare` folder per context, prepared once into
OUT/prepared_k<k>, organs a case does not contour left out through its missing_labels.json), the fixed
70/15/15 patient split, one run per training seed, scored on the validation patients (which choose the
context) and on the test patients. Models: `2d` (context_slices=0), `k1` and `k2`
(1 and 2 neighbouring slices on each side), `smp` (segmentation_models_pytorch's PSPNet on the same
timm encoder with smp's defaults, 2-D). Every model gets the experiment's data pipeline and the same
number of epochs. Scores are those of the test step: per volume on the network's grid (mm with the slice
spacing; NSD at 2 mm), then the mean over volumes; tables give the mean +- std across folds or seeds.
Each run is a row of RESULTS (default OUT/<dataset>/results.jsonl; one in the repository lets a campaign go on
in a later session): a rerun skips the (model, replicate, epochs) already there and tables the rows at EPOCHS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from medseg.config import compose_config
from medseg.data.partial_labels import mask_unlabelled
from medseg.data.prepare import prepare
from medseg.evaluation.volumes import volume_means
from medseg.training.pipeline import train
from medseg.utils.checkpoint import load_checkpoint
from medseg.utils.registry import register

sys.path.insert(0, str(Path(__file__).parent))
CONTEXT = {"2d": 0, "k1": 1, "k2": 2, "smp": 0}


def prepared_folder(source: Path, context: int, out: Path) -> Path:
    """experiment=hn_ct's medseg-prepare of SOURCE with CONTEXT slices (once; a rerun finds it up to date)."""
    folder = out / f"prepared_k{context}"
    prepare(
        source,
        folder,
        workers=2,
        layout="nnunet",
        normalize="ct",
        image_size=128,
        context_slices=context,
        missing_labels="missing_labels.json",
        compression="zstd",
    )
    return folder


def configure(dataset: str, model: str, replicate: int, epochs: int | None, out: Path, prepared: Path | None):
    """The experiment config of one run: MODEL's context (or smp's network), fold or seed REPLICATE, EPOCHS."""
    overrides = [f"experiment={dataset}", f"data.context_slices={CONTEXT[model]}", "callbacks.progress_bar=null"]
    overrides += ["model.log_images=false", *([f"stage.stages.0.epochs={epochs}"] if epochs else [])]
    overrides += [f"data.fold={replicate}"] if dataset == "chaos_mr" else [f"seed={replicate}", f"data.root={prepared}"]
    cfg = compose_config(overrides, out)
    if model == "smp":
        from smp_reference import smp_pspnet

        register("smp_reference.smp_pspnet", smp_pspnet)  # this script's own reference network
        with open_dict(cfg):
            net = {"_target_": "smp_reference.smp_pspnet", "encoder_name": "mobilenetv3", "in_channels": 1}
            cfg.model.net = OmegaConf.create(net)
            cfg.test = False  # checkpoints naming code outside medseg are refused on load: scored below
    return cfg


def volume_scores(cfg, best: Path, split: str) -> dict[str, float]:
    """The per-volume means of the best checkpoint on SPLIT, as the test step computes them (a class a case
    leaves out is not scored there)."""
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    module = instantiate(cfg.model, _recursive_=False)
    module.load_state_dict(load_checkpoint(best)["state_dict"])
    module.eval()
    slices = {}
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    with torch.no_grad():
        for batch in loader:
            preds = mask_unlabelled(module(batch["image"]).argmax(1), batch.get("labelled")).numpy()
            items = batch["index"] if "index" in batch else batch["id"]
            for i, pred, mask in zip(items, preds, batch["mask"].numpy(), strict=True):
                slices[int(i)] = (pred.astype("uint8"), mask.astype("uint8"))
    return volume_means(slices, datamodule.volumes(split), list(cfg.data.class_names), split)


def run(dataset: str, model: str, replicate: int, epochs: int | None, out: Path, source: Path) -> dict:
    """Train one run and score it; the row written to results.jsonl."""
    folder = out / f"{model}_{replicate}"
    prepared = prepared_folder(source, CONTEXT[model], out) if dataset == "hn_ct" else None
    cfg = configure(dataset, model, replicate, epochs, folder, prepared)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    best = folder / "checkpoints" / "best.ckpt"
    scores = volume_scores(cfg, best, "val")
    split = "val" if dataset == "chaos_mr" else "test"
    if split == "test":
        scores |= volume_scores(cfg, best, "test")
    row = {"model": model, "replicate": replicate, "epochs": int(cfg.trainer.max_epochs), "train_s": round(seconds)}
    return row | {"split": split, "date": time.strftime("%Y-%m-%d"), "commit": commit, "scores": scores}


def mean_std(values: list[float], digits: int = 3) -> str:
    """'mean +- std' of VALUES (std nan for one value)."""
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.{digits}f} +- {spread:.{digits}f}"


def table(rows: list[dict], classes: list[str], metric: str, split: str) -> str:
    """Markdown: per model, the mean +- std across replicates of METRIC on SPLIT per class and its class mean."""
    lines = [f"| model | {' | '.join(classes)} | mean | replicates |", "|---" * (len(classes) + 3) + "|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        cells = [mean_std([r["scores"][f"{split}/volume_{metric}_{cls}"] for r in mine]) for cls in [*classes, "mean"]]
        replicates = ", ".join(str(r["replicate"]) for r in mine)
        lines.append(f"| {model} | {' | '.join(cells)} | {replicates} |")
    return "\n".join(lines)


def summary(rows: list[dict], splits: tuple[str, ...]) -> str:
    """Markdown: per model, the class means of HD95 and NSD on each split and the training minutes per replicate."""
    columns = [(metric, split) for metric in ("hd95", "nsd") for split in splits]
    header = " | ".join(f"{metric.upper()} {split}" for metric, split in columns)
    lines = [f"| model | {header} | training (min) |", "|---" * (len(columns) + 2) + "|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        cells = [
            mean_std([r["scores"][f"{split}/volume_{metric}_mean"] for r in mine], 1 if metric == "hd95" else 3)
            for metric, split in columns
        ]
        minutes = ", ".join(str(round(r["train_s"] / 60)) for r in mine)
        lines.append(f"| {model} | {' | '.join(cells)} | {minutes} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["chaos_mr", "hn_ct"])
    parser.add_argument("--models", nargs="+", default=list(CONTEXT), choices=list(CONTEXT))
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the experiment's)")
    parser.add_argument("--source", type=Path, default=Path("../shared/data/hn_ct"), help="hn_ct: the data root")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/runs/volumes"), help="runs and prepared data")
    parser.add_argument("--results", type=Path, default=None, help="the rows (default OUT/<dataset>/results.jsonl)")
    args = parser.parse_args()
    out = args.out / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    results = args.results or out / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    epochs = args.epochs or int(compose_config([f"experiment={args.dataset}"], out).trainer.max_epochs)
    rows = [r for r in rows if r.get("epochs") == epochs]
    done = {(r["model"], r["replicate"]) for r in rows}
    replicates = args.folds if args.dataset == "chaos_mr" else args.seeds
    for replicate in replicates:
        for model in args.models:
            if (model, replicate) in done:
                continue
            row = run(args.dataset, model, replicate, epochs, out, args.source)
            rows.append(row)
            with open(results, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    keys = rows[0]["scores"] if rows else {}
    classes = list(dict.fromkeys(k.split("volume_dice_")[1] for k in keys if "volume_dice_" in k))
    classes.remove("mean")
    order = list(CONTEXT)
    chosen = sorted(
        (r for r in rows if r["replicate"] in replicates), key=lambda r: (order.index(r["model"]), r["replicate"])
    )
    splits = ("val",) if args.dataset == "chaos_mr" else ("val", "test")
    for split in splits:
        print(f"\n{args.dataset} {split}, {epochs} epochs: per-volume Dice, mean +- std across replicates\n")
        print(table(chosen, classes, "dice", split))
    print(f"\n{args.dataset}, {epochs} epochs: HD95 (mm) and NSD, mean over the classes; training minutes\n")
    print(summary(chosen, splits))


if __name__ == "__main__":
    main()
