"""medseg-node latency and throughput: series sent by storescu -> SEG stored in a real Orthanc, on loopback.

    python benchmarks/node.py MODEL.onnx [MODEL.int8.onnx ...] --series DIR [DIR ...] [--ct-volume 128 128]
        [--repeats 5] [--burst 5]

Starts Orthanc (DICOMweb plugin) and, per model, a `medseg-node` that sends SEGs back by C-STORE. Each
measurement sends one series (a copy with fresh Study, Series and SOP Instance UIDs, so the node sees a
new series) with dcmtk's storescu and waits until QIDO-RS finds its SEG: the latency includes the
transfer, the node's quiet time (QUIET_S, subtracted in the table), decoding, normalisation, the network,
writing and sending the SEG. Throughput: BURST series sent at once, series per minute until the last SEG.
--ct-volume SLICES SIZE adds a synthetic CT series of that many SIZExSIZE slices (the demo's generator; 128 128
is the size of an hn_ct volume, which ships as NIfTI). Needs orthanc, orthanc-dicomweb and dcmtk (apt).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from medseg.deploy.seg import ModelIdentity
from medseg.node.service import file_sha256

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.node_helpers import node_config, run_orthanc, storescu, to_orthanc, wait_for  # noqa: E402
from tests.node_helpers import start_node as start_node_process  # noqa: E402

QUIET_S = 1.0


def fresh_copy(series: Path, out: Path) -> tuple[list[Path], str]:
    """SERIES rewritten under OUT with new UIDs; (files, the new SeriesInstanceUID)."""
    out.mkdir(parents=True)
    study, uid, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for path in sorted(series.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, uid, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(out / path.name)
        files.append(out / path.name)
    return files, uid


def start_node(model: Path, folder: Path, dicom: int, threads: int) -> tuple[subprocess.Popen, int]:
    """medseg-node sending every series' SEG to Orthanc's DICOM port, with THREADS for the network."""
    folder.mkdir(parents=True)
    extra = {"rules": [{"name": "any"}], "quiet_s": QUIET_S, "threads": threads, "model_name": model.stem}
    config, port = node_config(folder, model, to_orthanc(dicom), **extra)
    return start_node_process(config, port), port


def seg_found(client, seg_series: str) -> bool:
    """Whether the server holds the SEG series (its UID follows from the source series and the model's hash)."""
    return bool(client.search_for_series(search_filters={"SeriesInstanceUID": seg_series, "Modality": "SEG"}))


def send_and_wait(files: list[Path], uid: str, port: int, client, model: ModelIdentity) -> float:
    seg_series, _ = model.seg_uids(uid)
    start = time.perf_counter()
    storescu(files, port).check_returncode()
    wait_for(lambda: seg_found(client, seg_series), timeout=300)
    return time.perf_counter() - start


def measure(model: Path, series: Path, repeats: int, burst: int, threads: int, work: Path) -> dict:
    (work / "orthanc").mkdir(parents=True)
    orthanc, _, dicom, client = run_orthanc(work / "orthanc")
    node, port = start_node(model, work / "node", dicom, threads)
    identity = ModelIdentity(sha256=file_sha256(model))
    try:
        latencies = []
        for i in range(repeats):
            files, uid = fresh_copy(series, work / f"single{i}")
            latencies.append(send_and_wait(files, uid, port, client, identity) - QUIET_S)
        copies = [fresh_copy(series, work / f"burst{i}") for i in range(burst)]
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(burst) as pool:
            list(pool.map(lambda c: send_and_wait(c[0], c[1], port, client, identity), copies))
        elapsed = time.perf_counter() - start
    finally:
        node.terminate()
        orthanc.terminate()
        node.wait(30)
        orthanc.wait(30)
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    slices = len(list(series.glob("*.dcm")))
    return {"p50": statistics.median(latencies), "p95": p95, "per_min": burst * 60 / elapsed, "slices": slices}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--series", nargs="*", type=Path, default=[], help="folders of one DICOM series each")
    parser.add_argument("--ct-volume", nargs=2, type=int, metavar=("SLICES", "SIZE"), help="a synthetic CT series")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--burst", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    series = list(args.series)
    if args.ct_volume:
        from medseg.data.synthetic import generate

        slices, size = args.ct_volume
        root = generate(Path(tempfile.mkdtemp(prefix="medseg-ct-volume-")), patients=1, slices=slices, size=size)
        series.append((root / "images" / "case00").rename(root / "images" / f"ct_{slices}x{size}x{size}"))
    print("| model | series | slices | p50 s | p95 s | series/min (5 at once) |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        for one in series:
            work = Path(tempfile.mkdtemp(prefix="medseg-node-bench-"))
            row = measure(model, one, args.repeats, args.burst, args.threads, work)  # kept on failure: node.out
            shutil.rmtree(work, ignore_errors=True)
            print(
                f"| {model.name} | {one.name} | {row['slices']} | {row['p50']:.2f} | {row['p95']:.2f} "
                f"| {row['per_min']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
