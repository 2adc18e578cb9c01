"""Helpers shared by test modules: the repository root, train.py in a subprocess, a sample-id recorder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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


def start_train(args: list[str], cache_dir: Path) -> subprocess.Popen:
    """Start train.py in the background, output discarded."""
    env = {**os.environ, "MEDSEG_CACHE": str(cache_dir)}
    cmd = [sys.executable, "train.py", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240, poll: float = 0.05) -> bool:
    """SIGKILL PROC as soon as READY() holds (or at the deadline); True when READY() held with PROC still running."""
    deadline = time.time() + timeout
    try:
        held = False
        while time.time() < deadline and proc.poll() is None and not (held := ready()):
            time.sleep(poll)
        running = proc.poll() is None
        if running:
            os.kill(proc.pid, signal.SIGKILL)
        return held and running
    finally:
        proc.kill()
        proc.wait()


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


def one_error_line(capsys, prog: str) -> str:
    """The one line a medseg CLI printed on stderr for a user error (`PROG: error: ...`)."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"{prog}: error: ")
    return err[0]
