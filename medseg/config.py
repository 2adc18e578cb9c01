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

from medseg.callbacks.progressive import total_epochs

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"


_NUMERIC_GROUP = re.compile(r"^(\+{0,2}stage)=([0-9][0-9,]*)$")


def quote_numeric_options(overrides: Sequence[str]) -> list[str]:
    """Quote numeric option names (`stage=2` -> `stage='2'`), which Hydra would otherwise parse as ints."""
    out = []
    for item in overrides:
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


def run_name(output_dir: str) -> str:
    """A tracker's name for this run: `<job number>: <overrides>` in a multirun, else the run folder's name."""
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        job = HydraConfig.get().job
        return f"{job.num}: {job.override_dirname}"
    return Path(output_dir).name


def run_group(default: str) -> str:
    """The experiment a run belongs to: its sweep (`sweep-<date>_<time>`) in a multirun, else DEFAULT."""
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep = Path(HydraConfig.get().sweep.dir)
        return f"sweep-{sweep.parent.name}_{sweep.name}"
    return default


def prepared_setting(root: str, key: str):
    """A data setting recorded in a medseg-prepare folder's medseg.json (for data=stream)."""
    from medseg.data.prepared import read_metadata

    return read_metadata(root)["settings"][key]


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


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _size(value) -> bool:
    """A positive integer or [height, width] of positive integers."""
    return _positive_int(value) or (
        isinstance(value, list | tuple) and len(value) == 2 and all(map(_positive_int, value))
    )


def validate_config(cfg: DictConfig) -> None:
    """Check the values a run needs before anything is decoded; raise one ValueError naming the key."""
    data = cfg.data
    if OmegaConf.is_missing(data, "root") or (data.get("layout") == "folder" and not data.get("root")):
        raise ValueError("data.root is required with this data config: the folder to train on")
    checks = data_checks(data, "data.") | {
        "data.batch_size": (data.get("batch_size"), _positive_int, "a positive integer"),
        "data.image_size": (data.get("image_size"), _size, "a positive integer or [height, width]"),
        "data.num_workers": (
            data.get("num_workers"),
            lambda v: v == "auto" or (isinstance(v, int) and v >= 0),
            "'auto' or an integer >= 0",
        ),
        "data.data_fraction": (data.get("data_fraction"), lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
        "seed": (cfg.get("seed"), lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    }
    if "split" in data:
        checks["data.split"] = (
            data.split,
            lambda v: len(v) == 3 and all(_number(x) and x >= 0 for x in v) and sum(v) > 0,
            "three non-negative fractions [train, val, test]",
        )
    for i, stage in enumerate(cfg.stage.stages):
        checks[f"stage.stages.{i}.epochs"] = (
            stage.get("epochs"),
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "an integer >= 0",
        )
        checks[f"stage.stages.{i}.lr"] = (stage.get("lr"), lambda v: _number(v) and v > 0, "a positive number")
        checks[f"stage.stages.{i}.image_size"] = (
            stage.get("image_size"),
            lambda v: v is None or _size(v),
            "null, a positive integer or [height, width]",
        )
    run_checks(checks)


def run_checks(checks: dict) -> None:
    """Raise one ValueError naming the first key whose value fails its check."""
    for key, (value, ok, expected) in checks.items():
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if not ok(value):
            raise ValueError(f"{key}: expected {expected}, got {value!r}")


def _window(value) -> bool:
    from medseg.data.dicom import WINDOW_PRESETS

    if value is None or (isinstance(value, str) and value in WINDOW_PRESETS):
        return True
    return isinstance(value, list | tuple) and len(value) == 2 and all(map(_number, value)) and value[1] > 0


def _label(value) -> bool:
    """An integer label value of a mask file (16 bits at most)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535


def _mapping(value) -> bool:
    def label(v) -> bool:
        return _label(v) or (isinstance(v, str) and v.isdigit())

    return value is None or (isinstance(value, dict) and all(label(k) and label(v) for k, v in value.items()))


def data_checks(data, prefix: str) -> dict:
    """The checks of the decoding settings in DATA (window, mask threshold and mapping), keys named with PREFIX."""
    from medseg.data.dicom import WINDOW_PRESETS

    checks = {
        "window": (_window, f"null, a preset {sorted(WINDOW_PRESETS)} or [center, width > 0]"),
        "mask_threshold": (lambda v: v is None or _label(v), "null or an integer label value in 0..65535"),
        "mask_mapping": (_mapping, "null or a mapping of label values to class indices, e.g. {255: 1}"),
    }
    return {f"{prefix}{key}": (data.get(key), ok, expected) for key, (ok, expected) in checks.items() if key in data}


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
