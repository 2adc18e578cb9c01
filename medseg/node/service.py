"""The node at work: instances spooled atomically, complete series selected by rule, segmented by the runtime
predictor (medseg-predict's code path), and their SEG sent once to the destination."""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from pathlib import Path

import pydicom

from medseg.deploy.predict import InputSeries, group_series, segment_dicom_series
from medseg.deploy.predictor import Predictor
from medseg.deploy.seg import ModelIdentity, write_seg
from medseg.node.jobs import JobTable
from medseg.node.rules import select
from medseg.node.send import send_seg
from medseg.node.settings import NodeSettings
from medseg.utils.io import atomic_path
from medseg.utils.privacy import pseudonym

log = logging.getLogger(__name__)
SEG_NAME = "seg.dcm"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Node:
    """Spool, job table, predictor and destination of one node (one model)."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.spool = settings.spool
        self.spool.mkdir(parents=True, exist_ok=True)
        self.jobs = JobTable(self.spool / "jobs.sqlite")
        self.predictor = Predictor(settings.model, threads=settings.threads)
        sha = file_sha256(settings.model)
        name = settings.model_name or settings.model.stem
        self.model = ModelIdentity(name, str(settings.model_version), sha)

    def series_folder(self, series: str) -> Path:
        """The spool folder of a series (named by its pseudonym)."""
        return self.spool / "series" / series

    def store(self, encoded: bytes, series_uid: str, sop_uid: str) -> str:
        """Write one received instance (a whole DICOM file's bytes) into the spool, atomically, and count it (an
        instance received again unchanged is not counted); returns the series' pseudonym. Called before the
        C-STORE is acknowledged."""
        series = pseudonym(series_uid)
        target = self.series_folder(series) / "instances" / f"{pseudonym(sop_uid)}.dcm"
        if target.is_file() and target.read_bytes() == encoded:
            return series
        with atomic_path(target) as tmp:
            tmp.write_bytes(encoded)
        self.jobs.instance_received(series, self.model.sha256)
        return series

    def instances(self, series: str) -> list[Path]:
        """The spooled instances of a series; files still being written (hidden temporary names) are left out."""
        folder = self.series_folder(series) / "instances"
        return sorted(p for p in folder.glob("*.dcm") if not p.name.startswith("."))

    def process_ready(self) -> int:
        """Process every series quiet for quiet_s that is not finished; returns how many."""
        rows = self.jobs.ready(self.model.sha256, self.settings.quiet_s)
        for row in rows:
            self.process(row["series"])
        return len(rows)

    def process(self, series: str) -> str:
        """Select, segment and send one series; its final state (a failure is recorded with its reason), or
        "received" when instances arrived meanwhile (it is processed again, whole, once quiet)."""
        row = self.jobs.get(series, self.model.sha256)
        version = int(row["version"]) if row else 0
        try:
            state = self._process(series, row, version)
        except Exception as exc:  # one series' problem never stops the node
            reason = f"{type(exc).__name__}: {exc}"
            if not self.jobs.set_state(series, self.model.sha256, "failed", reason, version):
                return "received"
            log.error("series %s failed: %s", series, reason.splitlines()[0])
            return "failed"
        return state

    def _process(self, series: str, row: dict | None, version: int) -> str:
        seg_path = self.series_folder(series) / SEG_NAME
        model = self.model.sha256
        if row is None or row["state"] != "segmented" or not seg_path.is_file():
            # claimed before the files are listed: an instance arriving from now on reopens the row
            if not self.jobs.set_state(series, model, "selected", "listing instances", version):
                return "received"
            refused: list = []
            found = group_series(self.instances(series), refused)
            rule, reason = None, refused[0][1] if refused else "no instances"
            if len(found) > 1:
                reason = f"{len(found)} stacks of different orientation in one series"
            elif found:
                rule, reason = select(self.settings.rules, found[0].items[0][1], len(found[0].frames))
            if rule is None:
                if self.jobs.set_state(series, model, "skipped", reason, version):
                    log.info("series %s skipped: %s", series, reason)
                    return "skipped"
                return "received"
            if not self.jobs.set_state(series, model, "selected", f"rule {rule}", version):
                return "received"
            if not self._segment(series, found[0], seg_path, version):
                return "received"
        send_seg(self.settings, pydicom.dcmread(seg_path))
        if not self.jobs.set_state(series, model, "sent", f"version {version}" if version else "", version):
            return "received"
        log.info("series %s: SEG sent", series)
        return "sent"

    def _segment(self, series: str, found: InputSeries, seg_path: Path, version: int) -> bool:
        skipped: list = []
        sources, _, masks = segment_dicom_series(self.predictor, found, skipped, self.settings.policy, series)
        if not sources:
            raise ValueError(f"no decodable instance ({skipped[0][1] if skipped else 'none'})")
        names = self.predictor.info.class_names
        written = write_seg(sources, masks, names, seg_path.parent / "out", self.model, version)
        written.replace(seg_path)  # same file system: atomic
        return self.jobs.set_state(series, self.model.sha256, "segmented", f"{len(masks)} slices", version)

    def clean(self) -> int:
        """Delete the spool folders of series finished more than retention_hours ago; returns how many."""
        cutoff = time.time() - self.settings.retention_hours * 3600
        removed = 0
        for row in self.jobs.finished_before(cutoff):
            folder = self.series_folder(row["series"])
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed
