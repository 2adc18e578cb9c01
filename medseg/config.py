"""Hydra/OmegaConf helpers: resolvers and composing the packaged config outside a Hydra app."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
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
