"""Hydra/OmegaConf helpers: resolvers and composing the packaged config outside a Hydra app."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from medseg.data.checks import data_checks, number, positive_int, run_checks, size
from medseg.data.context import context_channels
from medseg.utils.cli import RUN_PLUMBING

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"


def total_epochs(stages) -> int:
    """Sum of the stages' epochs (the trainer's max_epochs)."""
    return int(sum(int(s["epochs"]) for s in stages))


def schedule_cut(cfg: DictConfig) -> str | None:
    """What an overridden `trainer.max_epochs` does to the stage schedule, in one line; None when it runs whole.

    Fewer epochs than the stages' sum cut the schedule (the stage cut is named); more extend the last stage."""
    stages, epochs = cfg.stage.stages, int(cfg.trainer.max_epochs)
    planned = total_epochs(stages)
    if epochs == planned:
        return None
    if epochs > planned:
        return f"trainer.max_epochs={epochs} runs the last stage ({stages[-1].name}) {epochs - planned} epochs longer"
    end = 0
    for i, stage in enumerate(stages):
        end += int(stage.epochs)
        if epochs < end:
            ran = int(stage.epochs) - (end - epochs)
            skipped = [str(s.name) for s in stages[i + 1 :]]
            rest = f"; stages {', '.join(skipped)} do not run" if skipped else ""
            return (
                f"trainer.max_epochs={epochs} cuts stage.stages.{i} ({stage.name}) after {ran} of its "
                f"{stage.epochs} epochs{rest}"
            )
    return None


_NUMERIC_GROUP = re.compile(r"^(\+{0,2}stage)=([0-9][0-9,]*)$")


# Settings each stage of the schedule owns; `data.<key>` would be overwritten at every fit start.
STAGE_OWNED = ("data_fraction", "aug_strength")
_OWNED_OVERRIDE = re.compile(r"^\+{0,2}data\.(" + "|".join(STAGE_OWNED) + r")=")


def stage_owned_message(key: str) -> str:
    """The refusal of `data.KEY`, naming the stage key to set."""
    return f"data.{key}: the training stage owns it; set stage.stages.0.{key} (one value per stage) instead"


def quote_numeric_options(overrides: Sequence[str]) -> list[str]:
    """Quote numeric option names (`stage=2` -> `stage='2'`), which Hydra would otherwise parse as ints; refuse
    overrides of settings the stage owns (`data.aug_strength=...`) in one line."""
    out = []
    for item in overrides:
        owned = _OWNED_OVERRIDE.match(item)
        if owned:
            raise ValueError(stage_owned_message(owned.group(1)))
        match = _NUMERIC_GROUP.match(item)
        if match:
            item = f"{match.group(1)}=" + ",".join(f"'{v}'" for v in match.group(2).split(","))
        out.append(item)
    return out


def register_resolvers() -> None:
    """Register the resolvers the config tree uses (idempotent)."""
    OmegaConf.register_new_resolver("total_epochs", lambda stages: total_epochs(stages), replace=True)
    OmegaConf.register_new_resolver("prepared", prepared_setting, replace=True)
    OmegaConf.register_new_resolver("run_group", run_group, replace=True)
    OmegaConf.register_new_resolver("run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("nnunet_classes", nnunet_classes, replace=True)
    OmegaConf.register_new_resolver("context_channels", context_channels, replace=True)


def is_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (sweep)."""
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_name(output_dir: str) -> str:
    """A tracker's name for this run: `<job number>: <overrides>` in a multirun, else its overrides (run
    plumbing left out: paths, loggers, resume), else the run folder's name."""
    if is_multirun():
        job = HydraConfig.get().job
        return f"{job.num}: {job.override_dirname}"
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    chosen = " ".join(o for o in overrides if not o.startswith(RUN_PLUMBING))
    return chosen[:250] or Path(output_dir).name


def run_group(default: str) -> str:
    """The experiment a run belongs to: its sweep (`sweep-<date>_<time>`) in a multirun, else DEFAULT."""
    if is_multirun():
        sweep = Path(HydraConfig.get().sweep.dir)
        return f"sweep-{sweep.parent.name}_{sweep.name}"
    return default


def nnunet_classes(root: str) -> list[str]:
    """Class names of an nnU-Net raw dataset, from its dataset.json (for data=nnunet)."""
    from medseg.data.nifti import nnunet_class_names

    return nnunet_class_names(root)


def prepared_setting(root: str, key: str):
    """A data setting recorded in a medseg-prepare folder's medseg.json (for data=stream)."""
    from medseg.data.prepared import read_metadata

    settings = read_metadata(root)["settings"]
    # folders prepared before these settings existed
    defaults = {"context_slices": 0, "spacing": None, "normalize": "window"}
    return settings.get(key, defaults[key]) if key in defaults else settings[key]


register_resolvers()


def compose_config(overrides: Sequence[str] = (), output_dir: str | Path = "outputs/composed") -> DictConfig:
    """Compose conf/config.yaml as train.py would, for scripts and tests, writing into OUTPUT_DIR."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=quote_numeric_options(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(output_dir).resolve())
        del cfg["hydra"]  # as in a @hydra.main app, where only HydraConfig holds it
    return cfg


def validate_config(cfg: DictConfig) -> None:
    """Check the values a run needs before anything is decoded; raise one ValueError naming the key."""
    data = cfg.data
    for key in STAGE_OWNED:
        if key in data:
            raise ValueError(stage_owned_message(key))
    if OmegaConf.is_missing(data, "root") or (data.get("layout") == "folder" and not data.get("root")):
        raise ValueError("data.root is required with this data config: the folder to train on")
    checks = data_checks(data, "data.") | {
        "data.batch_size": (data.get("batch_size"), positive_int, "a positive integer"),
        "data.spacing": (
            data.get("spacing"),
            lambda v: v is None or (isinstance(v, list) and len(v) == 2 and all(number(x) and x > 0 for x in v)),
            "null or [row_mm, col_mm], two positive numbers",
        ),
        "data.context_slices": (
            data.get("context_slices", 0),
            lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 8,
            "an integer from 0 to 8",
        ),
        "data.image_size": (data.get("image_size"), size, "a positive integer or [height, width]"),
        "data.num_workers": (
            data.get("num_workers"),
            lambda v: v == "auto" or (isinstance(v, int) and v >= 0),
            "'auto' or an integer >= 0",
        ),
        "seed": (cfg.get("seed"), lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    }
    if "split" in data:
        checks["data.split"] = (
            data.split,
            lambda v: len(v) == 3 and all(number(x) and x >= 0 for x in v) and sum(v) > 0,
            "three non-negative fractions [train, val, test]",
        )
    for i, stage in enumerate(cfg.stage.stages):
        checks[f"stage.stages.{i}.epochs"] = (
            stage.get("epochs"),
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "an integer >= 0",
        )
        checks[f"stage.stages.{i}.lr"] = (stage.get("lr"), lambda v: number(v) and v > 0, "a positive number")
        checks[f"stage.stages.{i}.image_size"] = (
            stage.get("image_size"),
            lambda v: v is None or size(v),
            "null, a positive integer or [height, width]",
        )
    run_checks(checks, lambda v: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v)


class RunFolderCheck(Callback):
    """Hydra callback: a run or sweep folder that cannot be written ends the command in one line, exit 2."""

    @staticmethod
    def _check(folder: str) -> None:
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".medseg-write-check"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            print(f"train.py: error: {path}: cannot write the run folder ({exc.strerror or exc})", file=sys.stderr)
            raise SystemExit(2) from None

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        """Check hydra.run.dir before Hydra sets up logging in it."""
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """Check hydra.sweep.dir before the first job."""
        self._check(config.hydra.sweep.dir)
