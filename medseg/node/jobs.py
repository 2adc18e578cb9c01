"""The node's job table (SQLite beside the spool): one row per series and model, pseudonymised, with its state.

States: received -> selected | skipped -> segmented -> sent | failed. A row's (series, version, model) is the
idempotency record: a series is segmented and sent once per version and model, and a node restarted after a
crash resumes every row not in a final state. An instance that arrives once processing has begun reopens the
row as a new version of the series (received again); the processing of the older version then records
nothing more, and the new version's SEG, for the whole series, supersedes any SEG already sent.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FINAL = ("sent", "skipped", "failed")
PENDING = ("received", "selected", "segmented")
COLUMNS = (
    "series",
    "model",
    "state",
    "reason",
    "instances",
    "received_at",
    "last_instance_at",
    "updated_at",
    "version",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    series TEXT NOT NULL,            -- keyed pseudonym of the SeriesInstanceUID (also the spool folder)
    model TEXT NOT NULL,             -- SHA-256 of the model file
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    instances INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL,
    last_instance_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,  -- raised when an instance arrives after processing began
    PRIMARY KEY (series, model)
)
"""
REOPENED = "reopened: an instance arrived after processing began"


class JobTable:
    """The job table at PATH (created on first use; safe for a receiving thread and a processing loop)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)
            if "version" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:  # a table of 0.2.0
                db.execute("ALTER TABLE jobs ADD COLUMN version INTEGER NOT NULL DEFAULT 0")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit: each statement durable
        try:
            yield db
        finally:
            db.close()

    def instance_received(self, series: str, model: str) -> None:
        """Count one new instance of SERIES; a new series starts as received, one whose processing has begun is
        reopened as its next version."""
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (series, model, state, instances, received_at, last_instance_at, updated_at) "
                "VALUES (?, ?, 'received', 1, ?, ?, ?) ON CONFLICT (series, model) DO UPDATE SET "
                "instances = instances + 1, last_instance_at = excluded.last_instance_at, "
                "version = version + (state != 'received'), "
                "reason = CASE WHEN state = 'received' THEN reason ELSE ? END, "
                "updated_at = excluded.updated_at, state = 'received'",
                (series, model, now, now, now, REOPENED),
            )

    def set_state(self, series: str, model: str, state: str, reason: str = "", version: int | None = None) -> bool:
        """Move a row to STATE with a one-line REASON (only while it is still at VERSION, where given); returns
        whether it moved."""
        line = reason.splitlines()[0][:500] if reason else ""
        query = "UPDATE jobs SET state = ?, reason = ?, updated_at = ? WHERE series = ? AND model = ?"
        args: tuple = (state, line, time.time(), series, model)
        if version is not None:
            query, args = f"{query} AND version = ?", (*args, version)
        with self._connect() as db:
            return db.execute(query, args).rowcount > 0

    def ready(self, model: str, quiet_s: float) -> list[dict]:
        """Rows of MODEL not in a final state whose last instance came at least QUIET_S seconds ago."""
        cutoff = time.time() - quiet_s
        marks = ", ".join("?" * len(PENDING))
        query = (
            f"SELECT * FROM jobs WHERE model = ? AND state IN ({marks}) AND last_instance_at <= ? ORDER BY received_at"
        )
        return self._rows(query, (model, *PENDING, cutoff))

    def get(self, series: str, model: str) -> dict | None:
        """One row, or None."""
        rows = self._rows("SELECT * FROM jobs WHERE series = ? AND model = ?", (series, model))
        return rows[0] if rows else None

    def all(self) -> list[dict]:
        """Every row, oldest first."""
        return self._rows("SELECT * FROM jobs ORDER BY received_at", ())

    def finished_before(self, cutoff: float) -> list[dict]:
        """Rows in a final state last updated before CUTOFF (their spool may go)."""
        marks = ", ".join("?" * len(FINAL))
        return self._rows(f"SELECT * FROM jobs WHERE state IN ({marks}) AND updated_at < ?", (*FINAL, cutoff))

    def retry(self, series: str) -> int:
        """Put the failed rows of SERIES (a pseudonym) back to received; returns how many."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'received', reason = '', updated_at = ? WHERE series = ? AND state = 'failed'",
                (time.time(), series),
            )
            return cursor.rowcount

    def _rows(self, query: str, args: tuple) -> list[dict]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute(query, args)]
