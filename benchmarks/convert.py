"""DICOM -> VOC conversion throughput: 500 CT slices of 512x512, with 1 and 2 worker processes.

python benchmarks/convert.py [--patients 50] [--slices 10] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from medseg.data.convert import convert
from medseg.data.synthetic import generate


def main() -> None:
    """Generate the slices once, convert them with each worker count, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = generate(Path(tmp) / "src", patients=args.patients, slices=args.slices, size=args.size)
        files = args.patients * args.slices
        rows = []
        for workers in args.workers:
            dst = Path(tmp) / f"voc{workers}"
            start = time.perf_counter()
            report = convert(src, dst, workers=workers)
            elapsed = time.perf_counter() - start
            assert len(report.rows) == files and not report.failed
            rows.append((workers, elapsed, files / elapsed))
            shutil.rmtree(dst)
    print(f"\n{files} DICOM slices of {args.size}x{args.size} (16-bit CT, with PNG labels)\n")
    print("| workers | seconds | files/s |")
    print("|---|---|---|")
    for workers, elapsed, rate in rows:
        print(f"| {workers} | {elapsed:.1f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
