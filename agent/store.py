"""Run stores: one interface, two backends (SQLite here for the local controller; W&B's public
API in :mod:`agent.wandb_backend`, with the rest of the W&B code).

Contract of :class:`RunStore`:
- ``list_trials(sweep_id)`` returns :class:`Trial` records, oldest first; a record
  is a snapshot, never updated in place by the store.
- Queries (:mod:`agent.queries`) are written once against this interface.
- The SQLite store is safe across processes: every write is one transaction
  (``BEGIN IMMEDIATE``), so two agents never claim the same trial.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

SCHEMA_VERSION = 1
TERMINAL = ("finished", "failed", "crashed", "killed")
#: W&B run states (``sweeps.RunState``) our states map to when the search engine reads them.
STATES = ("pending", "running", "finished", "failed", "crashed", "killed", "preempted")


class StoreError(RuntimeError):
    pass


@dataclass
class Trial:
    sweep_id: str
    name: str
    state: str
    params: dict
    id: int | None = None
    run_id: str | None = None
    summary: dict = field(default_factory=dict)
    metric: float | None = None
    history: list = field(default_factory=list)   # the sweep metric per epoch, in order
    stopped: bool = False
    stop_reason: str | None = None
    error: str | None = None
    worker: str | None = None
    attempts: int = 0
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    lease_expires: float | None = None
    output_dir: str | None = None
    wandb_dir: str | None = None
    rank: int | None = None


@dataclass
class Sweep:
    id: str
    config: dict
    state: str = "running"       # running | paused | finished | cancelled
    name: str | None = None
    project: str | None = None
    entity: str | None = None
    backend: str = "local"
    created_at: float | None = None
    finished_reason: str | None = None

    @property
    def metric_name(self) -> str | None:
        return (self.config.get("metric") or {}).get("name")

    @property
    def goal(self) -> str:
        return (self.config.get("metric") or {}).get("goal", "minimize")


class RunStore(ABC):
    """Read access to a sweep and its trials; the queries need nothing more."""

    @abstractmethod
    def get_sweep(self, sweep_id: str) -> Sweep: ...

    @abstractmethod
    def list_trials(self, sweep_id: str | None = None, states: tuple[str, ...] | None = None) -> list[Trial]: ...

    @abstractmethod
    def epoch_history(self, trial: Trial) -> list[dict]:
        """The metrics the trainer logged per epoch (``epoch``, ``val_f1``, ...), in order."""

    def set_ranks(self, sweep_id: str, ranks: dict[str, int]) -> None:
        """Record leaderboard ranks by run id; every other trial of the sweep loses its old rank."""
        raise NotImplementedError


# ---------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY, name TEXT, config TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'running',
    project TEXT, entity TEXT, backend TEXT NOT NULL DEFAULT 'local', created_at REAL NOT NULL,
    finished_reason TEXT
);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep_id TEXT NOT NULL REFERENCES sweeps(id),
    name TEXT NOT NULL, run_id TEXT NOT NULL, state TEXT NOT NULL, params TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '{}', metric REAL, stopped INTEGER NOT NULL DEFAULT 0, stop_reason TEXT,
    error TEXT, worker TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, heartbeat_at REAL, lease_expires REAL,
    output_dir TEXT, wandb_dir TEXT, rank INTEGER,
    UNIQUE (sweep_id, name)
);
CREATE INDEX IF NOT EXISTS trials_by_sweep_state ON trials (sweep_id, state);
CREATE TABLE IF NOT EXISTS history (
    trial_id INTEGER NOT NULL REFERENCES trials(id), epoch INTEGER NOT NULL, metric REAL, metrics TEXT NOT NULL,
    PRIMARY KEY (trial_id, epoch)
);
"""


def state_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("CVSWEEP_DIR") or ".cvsweep")


class SQLiteStore(RunStore):
    """All local state in ``<CVSWEEP_DIR>/cvsweep.db`` (WAL mode)."""

    def __init__(self, root: str | os.PathLike | None = None, create: bool = True):
        self.root = state_dir(root)
        self.path = self.root / "cvsweep.db"
        if not self.path.exists() and not create:
            raise StoreError(f"no sweep state in {self.root} (CVSWEEP_DIR). Create a sweep first: "
                             "cvsweep create sweeps/demo.yaml --backend local")
        self.root.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self._init_schema()

    def _init_schema(self) -> None:
        with self.transaction() as c:
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    c.execute(stmt)
            row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {row[0]}, this cvsweep needs {SCHEMA_VERSION}. "
                    f"Use the cvsweep version that made it, or move {self.root} aside and create the sweep again.")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: commits, or rolls back and raises StoreError."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{self.path}: cannot start a transaction ({exc})") from None
        try:
            yield self.conn
        except sqlite3.DatabaseError as exc:
            self.conn.execute("ROLLBACK")
            raise StoreError(f"{self.path}: {exc}") from None
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    # -- sweeps -------------------------------------------------------------
    def add_sweep(self, sweep: Sweep) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO sweeps (id, name, config, state, project, entity, backend, created_at) "
                      "VALUES (?,?,?,?,?,?,?,?)",
                      (sweep.id, sweep.name, json.dumps(sweep.config), sweep.state, sweep.project, sweep.entity,
                       sweep.backend, time.time()))

    def get_sweep(self, sweep_id: str, conn=None) -> Sweep:
        row = (conn or self.conn).execute("SELECT * FROM sweeps WHERE id=?", (sweep_id,)).fetchone()
        if row is None:
            known = [r[0] for r in self.conn.execute("SELECT id FROM sweeps ORDER BY created_at DESC LIMIT 5")]
            raise StoreError(f"no sweep {sweep_id!r} in {self.root}" +
                             (f"; recent sweeps: {', '.join(known)}" if known else "; `cvsweep create FILE` makes one"))
        return Sweep(id=row["id"], config=json.loads(row["config"]), state=row["state"], name=row["name"],
                     project=row["project"], entity=row["entity"], backend=row["backend"],
                     created_at=row["created_at"], finished_reason=row["finished_reason"])

    def list_sweeps(self) -> list[Sweep]:
        return [self.get_sweep(r[0]) for r in self.conn.execute("SELECT id FROM sweeps ORDER BY created_at")]

    def set_sweep_state(self, sweep_id: str, state: str, reason: str | None = None, conn=None) -> None:
        def do(c):
            c.execute("UPDATE sweeps SET state=?, finished_reason=? WHERE id=?", (state, reason, sweep_id))
        if conn is not None:
            do(conn)
        else:
            with self.transaction() as c:
                do(c)

    # -- trials -------------------------------------------------------------
    def list_trials(self, sweep_id=None, states=None, conn=None, with_history: bool = True) -> list[Trial]:
        q, args = "SELECT * FROM trials", []
        where = []
        if sweep_id is not None:
            where.append("sweep_id=?")
            args.append(sweep_id)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += list(states)
        if where:
            q += " WHERE " + " AND ".join(where)
        rows = (conn or self.conn).execute(q + " ORDER BY id", args).fetchall()
        hist: dict[int, list] = {}
        if with_history and rows:
            hq = "SELECT trial_id, metric FROM history"
            hargs: list = []
            if sweep_id is not None:
                hq += " WHERE trial_id IN (SELECT id FROM trials WHERE sweep_id=?)"
                hargs = [sweep_id]
            for tid, m in (conn or self.conn).execute(hq + " ORDER BY trial_id, epoch", hargs):
                hist.setdefault(tid, []).append(m)
        return [self._trial(r, hist.get(r["id"], [])) for r in rows]

    @staticmethod
    def _trial(r: sqlite3.Row, history: list) -> Trial:
        return Trial(sweep_id=r["sweep_id"], name=r["name"], state=r["state"], params=json.loads(r["params"]),
                     id=r["id"], run_id=r["run_id"], summary=json.loads(r["summary"]), metric=r["metric"],
                     history=history, stopped=bool(r["stopped"]), stop_reason=r["stop_reason"], error=r["error"],
                     worker=r["worker"], attempts=r["attempts"], created_at=r["created_at"],
                     started_at=r["started_at"], finished_at=r["finished_at"], heartbeat_at=r["heartbeat_at"],
                     lease_expires=r["lease_expires"], output_dir=r["output_dir"], wandb_dir=r["wandb_dir"],
                     rank=r["rank"])

    def get_trial(self, trial_id: int) -> Trial:
        row = self.conn.execute("SELECT * FROM trials WHERE id=?", (trial_id,)).fetchone()
        if row is None:
            raise StoreError(f"no trial {trial_id}")
        hist = [m for (m,) in self.conn.execute("SELECT metric FROM history WHERE trial_id=? ORDER BY epoch",
                                                (trial_id,))]
        return self._trial(row, hist)

    def insert_trial(self, c, t: Trial) -> int:
        cur = c.execute(
            "INSERT INTO trials (sweep_id, name, run_id, state, params, created_at, started_at, worker, "
            "lease_expires, heartbeat_at, output_dir, wandb_dir) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (t.sweep_id, t.name, t.run_id, t.state, json.dumps(t.params), time.time(), t.started_at, t.worker,
             t.lease_expires, t.heartbeat_at, t.output_dir, t.wandb_dir))
        return int(cur.lastrowid)

    def update_trial(self, trial_id: int, conn=None, **cols) -> None:
        if "params" in cols or "summary" in cols:
            cols = {k: json.dumps(v) if k in ("params", "summary") else v for k, v in cols.items()}
        sets = ", ".join(f"{k}=?" for k in cols)
        stmt, args = f"UPDATE trials SET {sets} WHERE id=?", [*cols.values(), trial_id]
        if conn is not None:
            conn.execute(stmt, args)
        else:
            with self.transaction() as c:
                c.execute(stmt, args)

    def add_history(self, trial_id: int, epoch: int, metric: float | None, metrics: dict, conn) -> None:
        conn.execute("INSERT OR REPLACE INTO history VALUES (?,?,?,?)",
                     (trial_id, epoch, metric, json.dumps(metrics, default=float)))

    def epoch_history(self, trial: Trial) -> list[dict]:
        return [json.loads(m) for (m,) in self.conn.execute(
            "SELECT metrics FROM history WHERE trial_id=? ORDER BY epoch", (trial.id,))]

    def set_ranks(self, sweep_id: str, ranks: dict[str, int]) -> None:
        with self.transaction() as c:
            c.execute("UPDATE trials SET rank=NULL WHERE sweep_id=?", (sweep_id,))
            c.executemany("UPDATE trials SET rank=? WHERE sweep_id=? AND run_id=?",
                          [(r, sweep_id, run_id) for run_id, r in ranks.items()])
