"""Where jobs live: their state in a database, their outputs as files. An interface and its SQLite default.

The default keeps everything on one volume (the model repository's, or ``MAPEX_JOBS_DIR``): a
SQLite database in WAL mode (readers never wait for the writer, a crash loses no committed
write) and a folder per job for its inputs, finished strips and results, each written to a
temporary name and renamed, so a file that exists is whole. A deployment with several replicas
needs a store they share instead (docs/deploy.md): the same interface over PostgreSQL for the rows
and object storage for the folders.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["FINISHED", "JobRecord", "JobState", "JobStore", "SQLiteJobStore", "StripRecord"]

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED: tuple[JobState, ...] = ("done", "failed", "cancelled")


@dataclass
class JobRecord:
    """One job as stored: what was asked, how far it got, and what came of it."""

    id: str
    task: str
    state: JobState
    request: dict[str, Any]  # the validated JobRequest, plus the saved upload's files
    created: float
    started: float | None = None
    finished: float | None = None
    tiles_done: int = 0
    tiles_total: int = 0
    attempts: int = 0  # how many times it was started (a restart of the service starts it again)
    route: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    summary: dict[str, Any] | None = None
    expired: bool = False


@dataclass
class StripRecord:
    """A finished strip of a mask job's output: its rows and what they hold, so a resumed job need not redo it."""

    index: int
    row: int
    height: int
    stats: dict[str, Any] = field(default_factory=dict)


class JobStore(ABC):
    """What the jobs runner and routes need from a store; ``folder(id)`` is where a job's files go."""

    @abstractmethod
    def create(self, record: JobRecord) -> None: ...

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def update(self, job_id: str, **changes: Any) -> None: ...

    @abstractmethod
    def in_state(self, *states: JobState) -> list[JobRecord]: ...

    @abstractmethod
    def finished_before(self, when: float) -> list[JobRecord]: ...

    @abstractmethod
    def recent(self, limit: int) -> list[JobRecord]: ...

    @abstractmethod
    def counts(self) -> dict[tuple[str, JobState], int]:
        """Jobs by (task, state): what ``mapex_jobs`` reports; empty once the store is closed."""

    @abstractmethod
    def add_strip(self, job_id: str, strip: StripRecord) -> None: ...

    @abstractmethod
    def strips(self, job_id: str) -> list[StripRecord]: ...

    @abstractmethod
    def clear_strips(self, job_id: str) -> None: ...

    @abstractmethod
    def folder(self, job_id: str) -> Path: ...

    @abstractmethod
    def close(self) -> None: ...


_JSON_FIELDS = ("request", "route", "error", "summary")
_COLUMNS = ("id", "task", "state", "request", "created", "started", "finished", "tiles_done", "tiles_total",
            "attempts", "route", "error", "summary", "expired")


class SQLiteJobStore(JobStore):
    """Jobs in ``<root>/jobs.sqlite3`` (WAL), their files in ``<root>/<id>/``; one connection, behind a lock.

    Calls are short (a row or two), so the event loop makes them directly; the lock is for the
    worker threads that record strips.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a committed write survives a crash of the process
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, task TEXT NOT NULL, state TEXT NOT NULL, "
            "request TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL, tiles_done INTEGER DEFAULT 0, "
            "tiles_total INTEGER DEFAULT 0, attempts INTEGER DEFAULT 0, route TEXT, error TEXT, summary TEXT, "
            "expired INTEGER DEFAULT 0)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS strips (job TEXT NOT NULL, idx INTEGER NOT NULL, row INTEGER NOT NULL, "
            "height INTEGER NOT NULL, stats TEXT NOT NULL, PRIMARY KEY (job, idx))")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state)")

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def create(self, record: JobRecord) -> None:
        values = [json.dumps(getattr(record, c)) if c in _JSON_FIELDS else getattr(record, c) for c in _COLUMNS]
        self._run(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", tuple(values))

    @staticmethod
    def _record(row: tuple) -> JobRecord:
        values = dict(zip(_COLUMNS, row, strict=True))
        for c in _JSON_FIELDS:
            values[c] = json.loads(values[c]) if values[c] is not None else None
        values["expired"] = bool(values["expired"])
        return JobRecord(**values)

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._run(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,))
        return self._record(rows[0]) if rows else None

    def update(self, job_id: str, **changes: Any) -> None:
        unknown = set(changes) - set(_COLUMNS[2:])
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        values = [json.dumps(v) if k in _JSON_FIELDS and v is not None else v for k, v in changes.items()]
        self._run(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = ?", (*values, job_id))

    def in_state(self, *states: JobState) -> list[JobRecord]:
        rows = self._run(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE state IN ({', '.join('?' * len(states))}) "
                         f"ORDER BY created", states)
        return [self._record(r) for r in rows]

    def finished_before(self, when: float) -> list[JobRecord]:
        rows = self._run(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE finished IS NOT NULL AND finished < ? "
                         f"AND expired = 0", (when,))
        return [self._record(r) for r in rows]

    def recent(self, limit: int) -> list[JobRecord]:
        rows = self._run(f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY created DESC LIMIT ?", (limit,))
        return [self._record(r) for r in rows]

    def counts(self) -> dict[tuple[str, JobState], int]:
        try:
            rows = self._run("SELECT task, state, count(*) FROM jobs GROUP BY task, state")
        except sqlite3.ProgrammingError:  # closed: a scrape during shutdown
            return {}
        return {(task, state): n for task, state, n in rows}

    def add_strip(self, job_id: str, strip: StripRecord) -> None:
        self._run("INSERT OR REPLACE INTO strips (job, idx, row, height, stats) VALUES (?, ?, ?, ?, ?)",
                  (job_id, strip.index, strip.row, strip.height, json.dumps(strip.stats)))

    def strips(self, job_id: str) -> list[StripRecord]:
        rows = self._run("SELECT idx, row, height, stats FROM strips WHERE job = ? ORDER BY idx", (job_id,))
        return [StripRecord(i, r, h, json.loads(s)) for i, r, h, s in rows]

    def clear_strips(self, job_id: str) -> None:
        self._run("DELETE FROM strips WHERE job = ?", (job_id,))

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def close(self) -> None:
        with self._lock:
            self._db.close()


def now() -> float:
    """Wall-clock seconds (jobs outlive processes, so no monotonic clock)."""
    return time.time()
