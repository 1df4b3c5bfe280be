"""The ``images`` table of the moord SQLite database."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    name TEXT PRIMARY KEY,
    manifest_digest TEXT NOT NULL,
    config_digest TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    config TEXT NOT NULL,
    blobs TEXT NOT NULL
)
"""
# One row per snapshot and kind: after a change of snapshotter, the same chain id can
# have a snapshot of each kind, and container roots may still stack the old kind's.
_SNAPSHOT_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    name TEXT NOT NULL,
    parent TEXT NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (name, kind)
)
"""
_COLUMNS = "name, manifest_digest, config_digest, snapshot, size, created, config, blobs"


@dataclass(frozen=True)
class Image:
    """A named image: an OCI manifest, its config and the snapshot unpacked from its layers."""

    name: str
    id: str
    manifest_digest: str
    snapshot: str
    size: int
    created: float
    config: dict


@dataclass(frozen=True)
class ImageRecord:
    """A row of the table: the image and every blob digest its manifest references."""

    image: Image
    blobs: tuple[str, ...]


class ImageTable:
    """Rows ``name -> manifest``; each call opens its own short-lived connection."""

    def __init__(self, db_path: Path):
        self._db_path = db_path
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)
            conn.execute(_SNAPSHOT_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """Yield a connection inside one transaction, committed when the block succeeds."""
        conn = sqlite3.connect(self._db_path, timeout=30)
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    def all(self) -> list[ImageRecord]:
        """Return every row, sorted by name."""
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM images ORDER BY name").fetchall()
        return [_record(row) for row in rows]

    def get(self, name: str) -> ImageRecord | None:
        with self._connect() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM images WHERE name = ?", (name,)).fetchone()
        return _record(row) if row else None

    def put(self, records: list[ImageRecord]) -> None:
        """Insert or move the names of ``records``, all in one transaction."""
        rows = [_row(record) for record in records]
        with self._connect() as conn:
            conn.executemany(
                f"INSERT OR REPLACE INTO images ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def delete(self, names: list[str]) -> None:
        with self._connect() as conn:
            conn.executemany("DELETE FROM images WHERE name = ?", [(name,) for name in names])

    def snapshot_size(self, snapshot: str) -> int | None:
        """Return the recorded size of a snapshot, or None if no row uses it."""
        with self._connect() as conn:
            row = conn.execute("SELECT size FROM images WHERE snapshot = ? LIMIT 1",
                               (snapshot,)).fetchone()
        return row[0] if row else None


@dataclass(frozen=True)
class SnapshotRecord:
    """A committed layer snapshot: its chain id, its parent's ('' for none), kind and size."""

    name: str
    parent: str
    kind: str
    size: int


class SnapshotTable:
    """Rows ``chain id -> parent`` of the committed layer snapshots, in the images database."""

    def __init__(self, db_path: Path):
        self._db_path = db_path
        with self._connect() as conn:
            conn.execute(_SNAPSHOT_SCHEMA)
            _migrate_snapshot_key(conn)

    _connect = ImageTable._connect

    def all(self, kind: str) -> dict[str, SnapshotRecord]:
        """Return the snapshots of one kind by name."""
        with self._connect() as conn:
            rows = conn.execute("SELECT name, parent, kind, size FROM snapshots WHERE kind = ?",
                                (kind,)).fetchall()
        return {row[0]: SnapshotRecord(*row) for row in rows}

    def get(self, name: str, kind: str) -> SnapshotRecord | None:
        with self._connect() as conn:
            row = conn.execute("SELECT name, parent, kind, size FROM snapshots WHERE name = ? AND kind = ?",
                               (name, kind)).fetchone()
        return SnapshotRecord(*row) if row else None

    def kinds(self) -> set[str]:
        """Return every kind that has at least one snapshot."""
        with self._connect() as conn:
            return {row[0] for row in conn.execute("SELECT DISTINCT kind FROM snapshots")}

    def put(self, record: SnapshotRecord) -> None:
        with self._connect() as conn:
            conn.execute("INSERT OR REPLACE INTO snapshots (name, parent, kind, size) "
                         "VALUES (?, ?, ?, ?)",
                         (record.name, record.parent, record.kind, record.size))

    def delete(self, name: str, kind: str) -> None:
        with self._connect() as conn:
            conn.execute("DELETE FROM snapshots WHERE name = ? AND kind = ?", (name, kind))


def _migrate_snapshot_key(conn: sqlite3.Connection) -> None:
    """Key an older database's snapshots table by (name, kind) instead of name alone, rows kept."""
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'snapshots'").fetchone()[0]
    if "PRIMARY KEY (name, kind)" in sql:
        return
    conn.execute("ALTER TABLE snapshots RENAME TO snapshots_by_name")
    conn.execute(_SNAPSHOT_SCHEMA)
    conn.execute("INSERT INTO snapshots (name, parent, kind, size) "
                 "SELECT name, parent, kind, size FROM snapshots_by_name")
    conn.execute("DROP TABLE snapshots_by_name")


def _row(record: ImageRecord) -> tuple:
    image = record.image
    return (image.name, image.manifest_digest, image.id, image.snapshot, image.size,
            image.created, json.dumps(image.config), json.dumps(list(record.blobs)))


def _record(row: tuple) -> ImageRecord:
    name, manifest_digest, config_digest, snapshot, size, created, config, blobs = row
    image = Image(name=name, id=config_digest, manifest_digest=manifest_digest,
                  snapshot=snapshot, size=size, created=created, config=json.loads(config))
    return ImageRecord(image=image, blobs=tuple(json.loads(blobs)))
