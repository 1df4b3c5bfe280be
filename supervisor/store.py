"""SQLite metadata of moord: containers and their last known task state."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    image TEXT NOT NULL,
    image_id TEXT NOT NULL,
    created REAL NOT NULL,
    spec TEXT NOT NULL,
    options TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    restart_policy TEXT NOT NULL DEFAULT 'no',
    restart_count INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    pid INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    exit_signal INTEGER NOT NULL DEFAULT 0,
    exit_reason TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL DEFAULT 0,
    shim_pid INTEGER NOT NULL DEFAULT 0,
    shim_start_time INTEGER NOT NULL DEFAULT 0,
    task_gen INTEGER NOT NULL DEFAULT 0,
    acked_seq INTEGER NOT NULL DEFAULT 0,
    manually_stopped INTEGER NOT NULL DEFAULT 0,
    boot_id TEXT NOT NULL DEFAULT '',
    lost_bytes INTEGER NOT NULL DEFAULT 0,
    network TEXT NOT NULL DEFAULT '{}',
    oom_kills INTEGER NOT NULL DEFAULT 0,
    oom_killed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS removals (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    shim_pid INTEGER NOT NULL DEFAULT 0,
    shim_start_time INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass
class ContainerRecord:
    """One row of the containers table."""

    id: str
    name: str
    image: str
    image_id: str
    spec: dict
    options: dict
    created: float = field(default_factory=time.time)
    labels: dict = field(default_factory=dict)
    restart_policy: str = "no"
    restart_count: int = 0
    status: str = "created"
    pid: int = 0
    exit_code: int | None = None
    exit_signal: int = 0
    exit_reason: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    shim_pid: int = 0
    shim_start_time: int = 0
    task_gen: int = 0
    acked_seq: int = 0
    manually_stopped: bool = False
    boot_id: str = ""
    lost_bytes: int = 0
    network: dict = field(default_factory=dict)   # the network plugins' setup result of the current task
    oom_kills: int = 0            # OOM kills the shim reported for the current task
    oom_killed: bool = False      # the last task exited after an OOM kill in its cgroup (docker's OOMKilled)


_JSON_FIELDS = ("spec", "options", "labels", "network")
_COLUMNS = [f.name for f in fields(ContainerRecord)]


def _to_row(record: ContainerRecord) -> list:
    row = []
    for name in _COLUMNS:
        value = getattr(record, name)
        row.append(json.dumps(value) if name in _JSON_FIELDS else value)
    return row


def _from_row(row: sqlite3.Row) -> ContainerRecord:
    values = {name: row[name] for name in _COLUMNS}
    for name in _JSON_FIELDS:
        values[name] = json.loads(values[name])
    values["manually_stopped"] = bool(values["manually_stopped"])
    values["oom_killed"] = bool(values["oom_killed"])
    return ContainerRecord(**values)


class Store:
    """The metadata database, opened once by moord's event loop thread."""

    def __init__(self, path: Path):
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Add columns that a database made by an older moord lacks, with their defaults."""
        present = {row["name"] for row in self.db.execute("PRAGMA table_info(containers)")}
        for line in _SCHEMA.splitlines():
            words = line.strip().rstrip(",").split()
            if len(words) > 1 and words[0] in _COLUMNS and words[0] not in present:
                self.db.execute(f"ALTER TABLE containers ADD COLUMN {' '.join(words)}")

    def insert(self, record: ContainerRecord) -> None:
        marks = ", ".join("?" for _ in _COLUMNS)
        self.db.execute(f"INSERT INTO containers ({', '.join(_COLUMNS)}) VALUES ({marks})", _to_row(record))

    def save(self, record: ContainerRecord) -> None:
        assignments = ", ".join(f"{name} = ?" for name in _COLUMNS[1:])
        row = _to_row(record)
        self.db.execute(f"UPDATE containers SET {assignments} WHERE id = ?", row[1:] + row[:1])

    def delete(self, container_id: str) -> None:
        self.db.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    def retire(self, record: ContainerRecord) -> None:
        """Drop a container's row and note what of it is left to clean up, in one transaction.

        Its name is free at once; the ``removals`` row lets a restarted moord
        finish the cleanup if this one dies first.
        """
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM containers WHERE id = ?", (record.id,))
            self.db.execute("INSERT OR REPLACE INTO removals (id, name, shim_pid, shim_start_time) VALUES (?, ?, ?, ?)",
                            (record.id, record.name, record.shim_pid, record.shim_start_time))
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def removals(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM removals").fetchall()

    def removal_done(self, container_id: str) -> None:
        self.db.execute("DELETE FROM removals WHERE id = ?", (container_id,))

    def all(self) -> list[ContainerRecord]:
        rows = self.db.execute("SELECT * FROM containers ORDER BY created").fetchall()
        return [_from_row(row) for row in rows]

    def setting(self, key: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else default

    def set_setting(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self.db.close()
