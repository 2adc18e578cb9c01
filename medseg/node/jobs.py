"""The node's job table (SQLite beside the spool): one row per series and model, pseudonymised, with its state.

States: received -> selected | skipped -> segmented -> sent | failed. A row's (series, model) is the
idempotency record: a series is segmented and sent once per model, and a node restarted after a crash
resumes every row not in a final state.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FINAL = ("sent", "skipped", "failed")
PENDING = ("received", "selected", "segmented")
COLUMNS = ("series", "model", "state", "reason", "instances", "received_at", "last_instance_at", "updated_at")

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
    PRIMARY KEY (series, model)
)
"""


class JobTable:
    """The job table at PATH (created on first use; safe for a receiving thread and a processing loop)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit: each statement durable
        try:
            yield db
        finally:
            db.close()

    def instance_received(self, series: str, model: str) -> None:
        """Count one stored instance of SERIES; a new series starts as received."""
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (series, model, state, instances, received_at, last_instance_at, updated_at) "
                "VALUES (?, ?, 'received', 1, ?, ?, ?) ON CONFLICT (series, model) DO UPDATE SET "
                "instances = instances + 1, last_instance_at = excluded.last_instance_at",
                (series, model, now, now, now),
            )

    def set_state(self, series: str, model: str, state: str, reason: str = "") -> None:
        """Move a row to STATE with a one-line REASON."""
        with self._connect() as db:
            db.execute(
                "UPDATE jobs SET state = ?, reason = ?, updated_at = ? WHERE series = ? AND model = ?",
                (state, reason.splitlines()[0][:500] if reason else "", time.time(), series, model),
            )

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
