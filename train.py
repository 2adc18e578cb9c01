"""Train PSPNet: `python train.py [backbone=resnet18] [stage=progressive] [data=folder data.root=...]`."""

import sys

import hydra
from omegaconf import DictConfig

from medseg.config import quote_numeric_options
from medseg.training.pipeline import train
from medseg.utils.cli import run_cli


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the optimised metric for sweepers (user errors end in one line, exit 2)."""
    return run_cli("train.py", False, lambda: train(cfg)[0])


if __name__ == "__main__":
    sys.argv[1:] = run_cli("train.py", False, lambda: quote_numeric_options(sys.argv[1:]))
    main()
