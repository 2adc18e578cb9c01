"""Wall time and Dice of `python train.py` (the embedded demo) with different networks.

    python benchmarks/demo_default.py [--variants "NAME:override override" ...]

Each row is one `train.py` process, timed whole (start-up, decoding, 25 epochs, test), run one after
the other on the same generated demo data, each decoding it afresh (`data.decode_cache=null`, as a
first run does); Dice values are read back from the run's TensorBoard events.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medseg.data.synthetic import ensure_demo_dataset
from medseg.evaluation.report import val_curve

REPO = Path(__file__).resolve().parent.parent
VARIANTS = [
    "first 3 encoder stages (the default):",
    "first 3 stages, 256 decoder channels:model.net.decoder_channels=256",
    "first 4 stages (stride 16):model.net.encoder_depth=4",
    "all stages, output stride 16:model.net.encoder_depth=null model.net.output_stride=16",
    "all stages, output stride 8:model.net.encoder_depth=null",
]


def run(overrides: list[str], cache: Path, logs: Path) -> dict:
    """One timed `python train.py OVERRIDES`; its wall time, epoch count and Dice."""
    before = set(logs.glob("*/*"))
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "train.py", f"paths.log_dir={logs}", "data.decode_cache=null", *overrides],
        cwd=REPO,
        env={**os.environ, "MEDSEG_CACHE": str(cache)},
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - start
    (run_dir,) = set(logs.glob("*/*")) - before
    val = [value for _, value in val_curve(run_dir)]
    test = val_curve(run_dir, "test/dice_mean")
    return dict(wall_s=wall, epochs=len(val), best_val=max(val), test=test[-1][1] if test else float("nan"))


def main() -> None:
    """Run each variant once and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, help="'NAME:override override ...'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache, logs = Path(tmp) / "cache", Path(tmp) / "logs"
        ensure_demo_dataset(cache)  # generated once, outside the timed runs
        rows = []
        for variant in args.variants:
            name, _, overrides = variant.partition(":")
            result = run(overrides.split(), cache, logs)
            print(f"{name}: {result}", file=sys.stderr, flush=True)
            rows.append((name, result))
    print("| network | wall s | epochs | best val Dice | test Dice |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['wall_s']:.0f} | {r['epochs']} | {r['best_val']:.4f} | {r['test']:.4f} |")


if __name__ == "__main__":
    main()
