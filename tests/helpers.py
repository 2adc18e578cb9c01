"""Helpers shared by test modules: the repository root, train.py in a subprocess, a sample-id recorder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parent.parent


def run_train(args: list[str], cache_dir: Path, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run train.py as a user would; with CHECK, fail with its stderr unless it exits 0."""
    env = {**os.environ, "MEDSEG_CACHE": str(cache_dir)}
    result = subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


class RecordIds(Callback):
    """Appends one JSON line per training batch: epoch, global step after it, rank and the batch's sample ids."""

    def __init__(self, path: str, delay: float = 0.0) -> None:
        self.path = path
        self.delay = delay  # seconds per batch, to give a killer time to act

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        line = dict(epoch=trainer.current_epoch, step=trainer.global_step, rank=trainer.global_rank)
        with open(self.path, "a") as handle:
            handle.write(json.dumps({**line, "ids": [int(i) for i in batch["id"]]}) + "\n")
        time.sleep(self.delay)


def read_ids(path: Path) -> list[dict]:
    """The records a RecordIds callback wrote."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
