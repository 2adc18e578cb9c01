"""Lung fields on real chest X-rays from random weights: Dice per backbone at one wall-clock training budget.

    pip install segmentation-models-pytorch   # for the smp reference row only
    python benchmarks/cxr_lung_quality.py [--models mobilenetv3 efficientnet_b0 resnet18 convnext_tiny smp]
                                          [--budget-min 30] [--seeds 0 1 2] [--tta hflip]
    python benchmarks/cxr_lung_quality.py --rescore RUN [RUN ...] [--split val] [--tta scale1.25]

Every model trains with `experiment=cxr_lung_scratch` (one stage, AdamW 2e-3, cosine decay, 256x256,
70/15/15 patient split). Each model gets as many epochs as fit the budget, estimated from a few timed
steps, with `trainer.max_time` as a hard stop. `smp` is segmentation_models_pytorch's PSPNet with its
defaults (encoder depth 3 = output stride 8, 512 PSP channels) on the mobilenetv3 timm encoder.
With several `--seeds` every model trains once per seed on the same patient split (the split keeps
the experiment's seed) and a second table gives mean +- std across seeds. Prints markdown tables and
the evaluation command of each best checkpoint.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from medseg.config import compose_config
from medseg.models.encoder import BACKBONES
from medseg.training.pipeline import train
from medseg.utils.checkpoint import load_checkpoint
from medseg.utils.registry import register

REPO = Path(__file__).resolve().parent.parent
CXR = REPO.parent / "shared" / "data" / "cxr_lung"
SETUP_S = 60  # data setup, first validation images and checkpoint writes, per run
WARMUP_STEPS, TIMED_STEPS = 4, 4


def split_overrides(text: str) -> list[str]:
    """'a=1,b=[1,2],c={x:1,y:2}' -> ['a=1', 'b=[1,2]', 'c={x:1,y:2}']: commas split only outside brackets."""
    parts: list[str] = []
    depth, current = 0, ""
    for char in text + ",":
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            parts, current = [*parts, current] if current else parts, ""
        else:
            current += char
    return parts


def configure(model: str, out: Path, experiment: str = "cxr_lung_scratch", seed: int | None = None):
    """The experiment config for MODEL: a backbone, 'smp' (smp's PSPNet on mobilenetv3), or
    'NAME:key=value,key=value' (a variant: overrides on top of the experiment; commas inside [] or {}
    stay with their value); SEED changes the training seed only, never the patient split."""
    name, _, variant = model.partition(":")
    backbone = "mobilenetv3" if name == "smp" or name not in BACKBONES else name
    extra = split_overrides(variant)
    overrides = [f"data.root={CXR}", "callbacks.progress_bar=null", *extra]
    if not any(o.startswith("backbone=") for o in extra):
        overrides.insert(0, f"backbone={backbone}")
    run = name.replace("/", "_") + ("" if seed is None else f"_seed{seed}")
    cfg = compose_config([f"experiment={experiment}", *overrides], out / run)
    if seed is not None:
        with open_dict(cfg):
            cfg.data.seed, cfg.seed = int(cfg.data.seed), seed  # the split stays the experiment's
    if name == "smp":
        from smp_reference import smp_pspnet

        register("smp_reference.smp_pspnet", smp_pspnet)  # this script's own reference network
        with open_dict(cfg):
            cfg.model.net = OmegaConf.create(
                {"_target_": "smp_reference.smp_pspnet", "encoder_name": backbone, "in_channels": cfg.data.in_channels}
            )
            cfg.test = False  # checkpoints naming code outside medseg are refused on load: scored by split_scores
    return cfg


def epoch_seconds(cfg, stages: int = 1) -> list[float]:
    """Estimated seconds per epoch of each of the first STAGES stages (training steps at the stage's image
    size + validation) from timed steps; the data are decoded once for all of them."""
    from medseg.training.callbacks import ProgressiveSchedule

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    schedule = ProgressiveSchedule(cfg.stage.stages)
    seconds = []
    for stage in schedule.stages[:stages]:
        datamodule.set_stage(stage.data_fraction, stage.aug_strength, stage.size)
        seconds.append(_stage_epoch_seconds(cfg, datamodule))
    return seconds


def _stage_epoch_seconds(cfg, datamodule) -> float:
    """Seconds per epoch of DATAMODULE's current training loader (loading, augmentation and steps), plus
    validation at the data's own size."""
    torch.manual_seed(0)
    module = instantiate(cfg.model, _recursive_=False)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    batches = iter(datamodule.train_dataloader())
    times = []
    for _ in range(WARMUP_STEPS + TIMED_STEPS):  # the first steps are slower (workers, kernel selection)
        start = time.perf_counter()
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        module.criterion(module(batch["image"]), batch["mask"]).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    module.eval()
    images = next(iter(datamodule.val_dataloader()))["image"]
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(3):
            module(images)
        eval_s = (time.perf_counter() - start) / 3
    n_train = len(datamodule.splits["train"]) // cfg.data.batch_size
    n_val = math.ceil(len(datamodule.splits["val"]) / cfg.data.batch_size)
    return n_train * statistics.median(times[WARMUP_STEPS:]) + n_val * eval_s


def fit_epochs(cfg, budget_s: float) -> list[int]:
    """Epochs per stage that fill BUDGET_S: the stages' epochs scaled by one factor (one stage: all it can run)."""
    seconds = [s * 1.05 for s in epoch_seconds(cfg, len(cfg.stage.stages))]
    planned = [max(int(stage.epochs), 1) for stage in cfg.stage.stages]
    scale = (budget_s - SETUP_S) / sum(e * s for e, s in zip(planned, seconds, strict=True))
    return [max(1, int(e * scale)) for e in planned]


def split_scores(cfg, best: Path, tta: list[str], split: str = "test") -> dict[str, float]:
    """Per-image Dice and HD95 (px at 256) and whole-split Dice (`whole_dice`, as the trainer's test) on the test (or
    val) split of the best checkpoint's raw output, with the TTA views (`_tta`), and with the model's own
    keep-largest clean-up (`_clean`, `_tta_clean`) if it has one."""
    import numpy as np

    from medseg.deploy.averaging import tta_logits
    from medseg.evaluation.scores import SplitScores, case_scores
    from medseg.postprocess import keep_largest

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("test" if split == "test" else "fit")
    module = instantiate(cfg.model, _recursive_=False)
    module.load_state_dict(load_checkpoint(best)["state_dict"])
    module.eval()
    scores: dict[str, list[float]] = defaultdict(list)
    classes = list(cfg.data.class_names)
    whole: defaultdict[str, SplitScores] = defaultdict(lambda: SplitScores(classes, cfg.model.ignore_index))
    with torch.no_grad():
        for batch in datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader():
            plain = module(batch["image"])
            variants = {"": plain.argmax(1).numpy()}
            variants["_tta"] = tta_logits(module, batch["image"], tta, plain).argmax(1).numpy()
            if module.keep:
                for suffix in ("", "_tta"):
                    variants[f"{suffix}_clean"] = np.stack([keep_largest(p, module.keep) for p in variants[suffix]])
            for suffix, preds in variants.items():
                whole[suffix].update(preds, batch["mask"])
                for pred, target in zip(preds, batch["mask"].numpy(), strict=True):
                    case = case_scores(pred, target, len(cfg.data.class_names))
                    scores[f"dice{suffix}"].append(float(np.nanmean(case["dice"])))
                    scores[f"hd95{suffix}"].append(float(np.nanmean(case["hd95"])))
    whole_dice = {f"whole_dice{k}": m.compute()["dice_mean"] for k, m in whole.items()}
    return {k: float(np.nanmean(v)) for k, v in scores.items()} | whole_dice


SEED_SUMMARY = {
    "best val Dice": "best/val/dice_mean",
    "test Dice": "test/dice_mean",
    "per-image test Dice": "dice",
    "with TTA": "dice_tta",
    "per-image, keep-largest": "dice_clean",
    "TTA and keep-largest": "dice_tta_clean",
    "whole set, TTA and keep-largest": "whole_dice_tta_clean",
}


def print_seed_summary(models: list[str], rows: list) -> None:
    """Mean +- std across seeds of each model's val Dice, test Dice and per-image test Dice with and without TTA."""
    keys = SEED_SUMMARY
    print("\n| model | seeds | " + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys))
    for model in models:
        runs = [m for name, _, _, m, _ in rows if name == model]
        cells = []
        for key in keys.values():
            values = [float(m.get(key, float("nan"))) for m in runs]
            spread = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.mean(values):.4f} +- {spread:.4f}")
        print(f"| {model} | {len(runs)} | " + " | ".join(cells) + " |")


def _label(model: str, seed: int | None) -> str:
    return model if seed is None else f"{model} seed {seed}"


def main() -> None:
    """Train every model within the budget and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*BACKBONES, "smp"])
    parser.add_argument("--budget-min", type=float, default=30.0)
    parser.add_argument("--experiment", default="cxr_lung_scratch")
    parser.add_argument("--seeds", nargs="+", type=int, help="training seeds (default: the experiment's)")
    parser.add_argument("--epoch-times", action="store_true", help="only estimate each model's epoch time")
    parser.add_argument("--tta", nargs="+", default=["hflip"], help="test-time views of the TTA columns")
    parser.add_argument("--rescore", nargs="+", type=Path, help="only score these earlier runs' best checkpoints")
    parser.add_argument("--split", choices=["test", "val"], default="test", help="the split --rescore scores")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "cxr_lung_quality")
    args = parser.parse_args()
    if not (CXR / "images").is_dir():
        raise SystemExit(f"{CXR} not found: this benchmark needs the chest X-ray data set")
    torch.set_num_threads(2)
    if args.rescore:
        for run in args.rescore:
            config, best = OmegaConf.load(run / "config.yaml"), run / "checkpoints" / "best.ckpt"
            print(f"{run} ({args.split}, TTA {'+'.join(args.tta)}): {split_scores(config, best, args.tta, args.split)}")
        return
    rows = []
    if args.epoch_times:
        print("| model | params (M) | s per epoch |\n|---|---|---|")
    for model, seed in [(m, s) for m in args.models for s in args.seeds or [None]]:
        cfg = configure(model, args.out, args.experiment, seed)
        if args.epoch_times:
            params = sum(p.numel() for p in instantiate(cfg.model, _recursive_=False).parameters()) / 1e6
            print(f"| {model} | {params:.2f} | {epoch_seconds(cfg)[0]:.1f} |", flush=True)
            continue
        if seed is None or seed == args.seeds[0]:  # every seed of a model trains the same number of epochs
            epochs = fit_epochs(cfg, args.budget_min * 60)
        with open_dict(cfg):
            for stage, n in zip(cfg.stage.stages, epochs, strict=True):
                stage.epochs = n
            cfg.trainer.max_epochs = sum(epochs)
            seconds = round(args.budget_min * 60)
            cfg.trainer.max_time = f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        _, metrics = train(cfg)
        best = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
        metrics.update(split_scores(cfg, best, args.tta))
        rows.append((model, seed, epochs, metrics, best))
        print(f"{_label(model, seed)}: {epochs} epochs, {metrics}", flush=True)
    if args.epoch_times:
        return
    print(f"\ncxr_lung, 256x256, random init, budget {args.budget_min:g} min of training on this machine\n")
    views = "+".join(args.tta)
    print(
        f"| model | epochs | training min | best val Dice | test Dice | per-image test Dice | with {views} TTA "
        "| HD95 px | HD95 px, TTA | per-image, keep-largest | HD95 px, keep-largest | TTA and keep-largest |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for model, seed, epochs, m, _ in rows:
        print(
            f"| {_label(model, seed)} | {'+'.join(map(str, epochs))} | {m['train_time_s'] / 60:.1f} "
            f"| {m.get('best/val/dice_mean', nan):.4f} "
            f"| {m.get('test/dice_mean', nan):.4f} | {m['dice']:.4f} | {m['dice_tta']:.4f} "
            f"| {m['hd95']:.1f} | {m['hd95_tta']:.1f} "
            f"| {m.get('dice_clean', nan):.4f} | {m.get('hd95_clean', nan):.1f} | {m.get('dice_tta_clean', nan):.4f} |"
        )
    if args.seeds and len(args.seeds) > 1:
        print_seed_summary(args.models, rows)
    for model, seed, _, _, best in rows:
        run = best.parent.parent
        split = run / "split.json"
        command = f"medseg-eval {best} {CXR} --out {run / 'eval'} --mask-threshold 128 --split-file {split}"
        print(f"\n{_label(model, seed)}: {command}")


if __name__ == "__main__":
    main()
