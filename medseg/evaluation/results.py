"""A sweep's results file: one JSON line per job, appended by training, read by medseg-report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)
RESULTS_FILE = "results.jsonl"


def append_result(path: str | Path, record: dict) -> None:
    """Append one JSON line to a sweep's results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_results(multirun_dir: str | Path) -> list[dict]:
    """Records of every run of a sweep, in job order."""
    path = Path(multirun_dir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run a sweep with `python train.py -m ...` first")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            record = "broken"
        if isinstance(record, dict):
            records.append(record)
        elif record is not None:  # a job killed while appending its line
            log.warning("%s:%d: not a result record; left out", path, number)
    if not records:
        raise ValueError(f"{path}: no readable result records")
    return sorted(records, key=lambda r: r.get("job", 0) if isinstance(r.get("job", 0), int) else 0)
