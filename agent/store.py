"""Run stores: one interface, two backends (SQLite here for the local controller; W&B's public
API in :mod:`agent.wandb_backend`, with the rest of the W&B code).

Contract of :class:`RunStore`:
- ``list_trials(sweep_id)`` returns :class:`Trial` records, oldest first; a record
  is a snapshot, never updated in place by the store.
- Queries (:mod:`agent.queries`) are written once against this interface.

:class:`SQLiteStore` adds its own contract (threads, processes, owners) in its docstring.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from cvtrain.split import split_seed_from_sweep_id

SCHEMA_VERSION = 2   # 2: sweeps.seed, trials.attempt, history.attempt/reported_at (version 1 is migrated in place)
TERMINAL = ("finished", "failed", "crashed", "killed")
#: W&B run states (``sweeps.RunState``) our states map to when the search engine reads them.
STATES = ("pending", "running", "finished", "failed", "crashed", "killed", "preempted")


class StoreError(RuntimeError):
    pass


class LeaseLost(StoreError):
    """A write about a trial from a worker that no longer owns it (its lease was given to another)."""


@dataclass(frozen=True)
class Owner:
    """Who may write about a trial: the worker a claim named and the claim's attempt number."""
    worker: str
    attempt: int

    def __str__(self) -> str:
        return f"{self.worker} (attempt {self.attempt})"


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
    attempts: int = 0             # times a worker was lost with this trial (leases that ran out)
    attempt: int = 0              # the current claim's number: 1 for the first, +1 per claim (fencing token)
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    lease_expires: float | None = None
    output_dir: str | None = None
    wandb_dir: str | None = None
    rank: int | None = None

    @property
    def owner(self) -> Owner:
        return Owner(self.worker or "", self.attempt)


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
    seed: int | None = None      # seeds every suggestion (with the number of trials): the search replays

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
    def list_trials(self, sweep_id: str | None = None, states: tuple[str, ...] | None = None,
                    with_history: bool = True) -> list[Trial]:
        """The sweep's trials, oldest first; ``with_history=False`` may skip the per-epoch metric lists."""

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


def state_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else CVSWEEP_DIR as the settings resolve it (environment over .env over ``.cvsweep``)."""
    if path:
        return Path(path)
    from .settings import load_settings

    return load_settings().state_dir


def seed_from_id(sweep_id: str) -> int:
    """A stable seed for a sweep made before sweeps had one (the W&B backend's split seed is the same)."""
    return split_seed_from_sweep_id(sweep_id)


def disk_usage(root: str | os.PathLike, pattern: str = "**/*") -> int:
    """Bytes of the files under ``root`` matching ``pattern``; a file with several hard links counts once."""
    seen, total = set(), 0
    for p in Path(root).glob(pattern):
        try:
            st = p.stat()
        except OSError:  # removed while we looked
            continue
        if p.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    return total


class _Connection(sqlite3.Connection):
    """A connection the store can hold weakly: a thread's connection closes when the thread ends."""


class SQLiteStore(RunStore):
    """All local state in ``<CVSWEEP_DIR>/cvsweep.db`` (WAL mode).

    Contract:

    - **Threads.** One instance may be shared by any number of threads. Each thread
      talks to SQLite through its own connection, opened on its first use and
      closed when the thread ends or on :meth:`close`; :attr:`conn` is the calling
      thread's. ``with store.transaction() as conn`` from several threads at once
      never raises: SQLite serialises the writers (``BEGIN IMMEDIATE``, 60 s busy
      timeout).
    - **Processes.** Many processes may open the same file; every write is one
      transaction, so two agents never claim the same trial.
    - **Snapshots.** Records returned (:class:`Trial`, :class:`Sweep`) are copies;
      the store never changes them in place.
    - **Owners.** The store writes what it is told; the fencing of writes about a
      trial (who owns it, with which attempt) is the controller's, in the same
      transaction as the write (:class:`agent.controller.LocalController`).
    - **Schema.** The file carries its schema version; a version-1 file is migrated
      in place, a newer one is refused with what to do.
    """

    def __init__(self, root: str | os.PathLike | None = None, create: bool = True):
        self.root = state_dir(root)
        self.path = self.root / "cvsweep.db"
        if not self.path.exists() and not create:
            raise StoreError(f"no sweep state in {self.root} (CVSWEEP_DIR). Create a sweep first: "
                             "cvsweep create sweeps/demo.yaml --backend local")
        self.root.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._open: "weakref.WeakSet[_Connection]" = weakref.WeakSet()
        self._open_lock = threading.Lock()
        self._init_schema()

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._connect()
            self._local.conn = c
        return c

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False only so close() may close it from another thread; it is used by one.
        c = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False,
                            factory=_Connection)
        c.row_factory = sqlite3.Row
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute("PRAGMA foreign_keys=ON")
        with self._open_lock:
            self._open.add(c)
        return c

    def _init_schema(self) -> None:
        with self.transaction() as c:
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    c.execute(stmt)
            row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) == 1:
                self._migrate_1_to_2(c)
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {row[0]}, this cvsweep needs {SCHEMA_VERSION}. "
                    f"Use the cvsweep version that made it, or move {self.root} aside and create the sweep again.")

    @staticmethod
    def _migrate_1_to_2(c: sqlite3.Connection) -> None:
        for stmt in _MIGRATE_1_TO_2:
            c.execute(stmt)
        for (sid,) in c.execute("SELECT id FROM sweeps").fetchall():
            c.execute("UPDATE sweeps SET seed=? WHERE id=?", (seed_from_id(sid), sid))
        c.execute("UPDATE trials SET attempt=1 WHERE state='running'")
        c.execute("UPDATE meta SET value='2' WHERE key='schema_version'")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on this thread's connection: commits, or rolls back and raises StoreError."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{self.path}: cannot start a transaction ({exc})") from None
        try:
            yield conn
        except sqlite3.DatabaseError as exc:
            conn.execute("ROLLBACK")
            raise StoreError(f"{self.path}: {exc}") from None
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection; a later call opens a new one."""
        with self._open_lock:
            conns, self._open = list(self._open), weakref.WeakSet()
            self._local = threading.local()
        for c in conns:
            c.close()

    # -- sweeps -------------------------------------------------------------
    def add_sweep(self, sweep: Sweep) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO sweeps (id, name, config, state, project, entity, backend, created_at, seed) "
                      "VALUES (?,?,?,?,?,?,?,?,?)",
                      (sweep.id, sweep.name, json.dumps(sweep.config), sweep.state, sweep.project, sweep.entity,
                       sweep.backend, time.time(), sweep.seed))

    def get_sweep(self, sweep_id: str, conn=None) -> Sweep:
        row = (conn or self.conn).execute("SELECT * FROM sweeps WHERE id=?", (sweep_id,)).fetchone()
        if row is None:
            known = [r[0] for r in self.conn.execute("SELECT id FROM sweeps ORDER BY created_at DESC LIMIT 5")]
            raise StoreError(f"no sweep {sweep_id!r} in {self.root}" +
                             (f"; recent sweeps: {', '.join(known)}" if known else "; `cvsweep create FILE` makes one"))
        return Sweep(id=row["id"], config=json.loads(row["config"]), state=row["state"], name=row["name"],
                     project=row["project"], entity=row["entity"], backend=row["backend"],
                     created_at=row["created_at"], finished_reason=row["finished_reason"], seed=row["seed"])

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

    def change_sweep_state(self, sweep_id: str, state: str, allowed_from: tuple[str, ...],
                           reason: str | None = None) -> None:
        """``state`` when the sweep is in one of ``allowed_from``, as one conditional UPDATE (a pause can
        never undo a cancel that came first); StoreError names the state it is in otherwise. A cancel
        kills the trials still waiting (pending, preempted) in the same transaction."""
        with self.transaction() as c:
            cur = c.execute(f"UPDATE sweeps SET state=?, finished_reason=? WHERE id=? AND state IN "
                            f"({','.join('?' * len(allowed_from))})", (state, reason, sweep_id, *allowed_from))
            if cur.rowcount != 1:
                current = self.get_sweep(sweep_id, conn=c).state  # StoreError when there is no such sweep
                raise StoreError(f"sweep {sweep_id} is {current}; cannot go to {state}")
            if state == "cancelled":
                c.execute("UPDATE trials SET state='killed', stop_reason='sweep cancelled', finished_at=?, "
                          "lease_expires=NULL, worker=NULL WHERE sweep_id=? AND state IN ('pending', 'preempted')",
                          (time.time(), sweep_id))

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

    def trials_for_search(self, sweep_id: str, conn, with_params: bool = True,
                          with_history: bool = False) -> list[Trial]:
        """The sweep's trials with only what the controller and the search engine read (no summary,
        no output paths; params and the metric's history when asked): cheap at 1,000 trials x 30 epochs."""
        cols = "id, name, state, metric, worker, attempts, attempt, lease_expires" + (", params" if with_params else "")
        rows = conn.execute(f"SELECT {cols} FROM trials WHERE sweep_id=? ORDER BY id", (sweep_id,)).fetchall()
        hist: dict[int, list] = {}
        if with_history and rows:
            # Non-finite epochs (NULL) stay in place: hyperband counts positions.
            for tid, m in conn.execute("SELECT h.trial_id, h.metric FROM history h JOIN trials t ON t.id=h.trial_id "
                                       "WHERE t.sweep_id=? ORDER BY h.trial_id, h.epoch", (sweep_id,)):
                hist.setdefault(tid, []).append(m)
        return [Trial(sweep_id=sweep_id, name=r["name"], state=r["state"],
                      params=json.loads(r["params"]) if with_params else {}, id=r["id"], metric=r["metric"],
                      history=hist.get(r["id"], []), worker=r["worker"], attempts=r["attempts"],
                      attempt=r["attempt"], lease_expires=r["lease_expires"]) for r in rows]

    @staticmethod
    def _trial(r: sqlite3.Row, history: list) -> Trial:
        return Trial(sweep_id=r["sweep_id"], name=r["name"], state=r["state"], params=json.loads(r["params"]),
                     id=r["id"], run_id=r["run_id"], summary=json.loads(r["summary"]), metric=r["metric"],
                     history=history, stopped=bool(r["stopped"]), stop_reason=r["stop_reason"], error=r["error"],
                     worker=r["worker"], attempts=r["attempts"], created_at=r["created_at"],
                     started_at=r["started_at"], finished_at=r["finished_at"], heartbeat_at=r["heartbeat_at"],
                     lease_expires=r["lease_expires"], output_dir=r["output_dir"], wandb_dir=r["wandb_dir"],
                     rank=r["rank"], attempt=r["attempt"])

    def get_trial(self, trial_id: int, conn=None) -> Trial:
        conn = conn or self.conn
        row = conn.execute("SELECT * FROM trials WHERE id=?", (trial_id,)).fetchone()
        if row is None:
            raise StoreError(f"no trial {trial_id}")
        hist = [m for (m,) in conn.execute("SELECT metric FROM history WHERE trial_id=? ORDER BY epoch",
                                                (trial_id,))]
        return self._trial(row, hist)

    def insert_trial(self, c, t: Trial) -> int:
        cur = c.execute(
            "INSERT INTO trials (sweep_id, name, run_id, state, params, created_at, started_at, worker, "
            "lease_expires, heartbeat_at, output_dir, wandb_dir, attempt) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (t.sweep_id, t.name, t.run_id, t.state, json.dumps(t.params), t.created_at or time.time(),
             t.started_at, t.worker, t.lease_expires, t.heartbeat_at, t.output_dir, t.wandb_dir, t.attempt))
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

    def add_history(self, trial_id: int, epoch: int, metric: float | None, metrics: dict, conn,
                    attempt: int | None = None, reported_at: float | None = None) -> None:
        """One epoch's metrics; a resumed attempt that repeats an epoch replaces it (one row per epoch)."""
        conn.execute("INSERT OR REPLACE INTO history (trial_id, epoch, metric, metrics, attempt, reported_at) "
                     "VALUES (?,?,?,?,?,?)",
                     (trial_id, epoch, metric, json.dumps(metrics, default=float), attempt, reported_at))

    def epoch_history(self, trial: Trial) -> list[dict]:
        return [json.loads(m) for (m,) in self.conn.execute(
            "SELECT metrics FROM history WHERE trial_id=? ORDER BY epoch", (trial.id,))]

    def set_ranks(self, sweep_id: str, ranks: dict[str, int]) -> None:
        with self.transaction() as c:
            c.execute("UPDATE trials SET rank=NULL WHERE sweep_id=?", (sweep_id,))
            c.executemany("UPDATE trials SET rank=? WHERE sweep_id=? AND run_id=?",
                          [(r, sweep_id, run_id) for run_id, r in ranks.items()])
