"""The SQLite file's schema: its tables, its version, and the migration of older files in place."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from cvtrain.split import split_seed_from_sweep_id

SCHEMA_VERSION = 2   # 2: sweeps.seed, trials.attempt, history.attempt/reported_at (version 1 is migrated in place)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY, name TEXT, config TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'running',
    project TEXT, entity TEXT, backend TEXT NOT NULL DEFAULT 'local', created_at REAL NOT NULL,
    finished_reason TEXT, seed INTEGER
);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep_id TEXT NOT NULL REFERENCES sweeps(id),
    name TEXT NOT NULL, run_id TEXT NOT NULL, state TEXT NOT NULL, params TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '{}', metric REAL, stopped INTEGER NOT NULL DEFAULT 0, stop_reason TEXT,
    error TEXT, worker TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, heartbeat_at REAL, lease_expires REAL,
    output_dir TEXT, wandb_dir TEXT, rank INTEGER, attempt INTEGER NOT NULL DEFAULT 0,
    UNIQUE (sweep_id, name)
);
CREATE INDEX IF NOT EXISTS trials_by_sweep_state ON trials (sweep_id, state);
CREATE TABLE IF NOT EXISTS history (
    trial_id INTEGER NOT NULL REFERENCES trials(id), epoch INTEGER NOT NULL, metric REAL, metrics TEXT NOT NULL,
    attempt INTEGER, reported_at REAL, PRIMARY KEY (trial_id, epoch)
);
"""
#: Version 1 -> 2, in place: new columns; old sweeps get a seed derived from their id.
_MIGRATE_1_TO_2 = (
    "ALTER TABLE sweeps ADD COLUMN seed INTEGER",
    "ALTER TABLE trials ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE history ADD COLUMN attempt INTEGER",
    "ALTER TABLE history ADD COLUMN reported_at REAL",
)


class SchemaError(RuntimeError):
    """The file's schema is one this cvsweep cannot use."""


def init_schema(c: sqlite3.Connection, path: Path, root: Path) -> None:
    """Create the tables when missing; migrate a version-1 file; refuse a newer one with what to do.
    ``c`` is inside a transaction."""
    for stmt in _SCHEMA.strip().split(";"):
        if stmt.strip():
            c.execute(stmt)
    row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        c.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    elif int(row[0]) == 1:
        migrate_1_to_2(c)
    elif int(row[0]) != SCHEMA_VERSION:
        raise SchemaError(
            f"{path} has schema version {row[0]}, this cvsweep needs {SCHEMA_VERSION}. "
            f"Use the cvsweep version that made it, or move {root} aside and create the sweep again.")


def migrate_1_to_2(c: sqlite3.Connection) -> None:
    for stmt in _MIGRATE_1_TO_2:
        c.execute(stmt)
    for (sid,) in c.execute("SELECT id FROM sweeps").fetchall():
        # the seed a version-1 sweep had implicitly (store.seed_from_id)
        c.execute("UPDATE sweeps SET seed=? WHERE id=?", (split_seed_from_sweep_id(sid), sid))
    c.execute("UPDATE trials SET attempt=1 WHERE state='running'")
    c.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
