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
from pathlib import Path
from typing import Iterator

from cvtrain.split import split_seed_from_sweep_id

from .records import STATES, TERMINAL, LeaseLost, Owner, RunStore, StoreError, Sweep, Trial  # noqa: F401 - the records are the store's vocabulary: most callers import them from here
from .settings import load_settings
from .store_schema import SchemaError, init_schema


def state_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else CVSWEEP_DIR as the settings resolve it (environment over .env over ``.cvsweep``)."""
    if path:
        return Path(path)
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
        try:
            with self.transaction() as c:
                init_schema(c, self.path, self.root)
        except SchemaError as exc:
            raise StoreError(str(exc)) from None

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

    def owned_trial(self, trial_id: int, owner: Owner, conn) -> sqlite3.Row:
        """The trial's row, when ``owner`` still holds it; else LeaseLost (the transaction rolls back)."""
        row = conn.execute("SELECT sweep_id, name, state, worker, attempt FROM trials WHERE id=?",
                           (trial_id,)).fetchone()
        if row is None:
            raise StoreError(f"no trial {trial_id}")
        if row["state"] != "running" or row["worker"] != owner.worker or row["attempt"] != owner.attempt:
            holder = f"held by {row['worker']} (attempt {row['attempt']})" if row["state"] == "running" else row["state"]
            raise LeaseLost(f"trial {row['name']} is {holder}: refused a write from {owner}")
        return row

    def extend_lease(self, trial_id: int, owner: Owner, now: float, expires: float) -> bool:
        """One transaction: a heartbeat, when ``owner`` still holds the running trial (True), else nothing."""
        with self.transaction() as c:
            cur = c.execute("UPDATE trials SET heartbeat_at=?, lease_expires=? "
                            "WHERE id=? AND worker=? AND attempt=? AND state='running'",
                            (now, expires, trial_id, owner.worker, owner.attempt))
            return cur.rowcount == 1

    def next_attempt(self, trial_id: int, conn) -> None:
        """A new claim of a queued trial: its attempt number (the owners' fencing token) goes up by one."""
        conn.execute("UPDATE trials SET attempt=attempt+1 WHERE id=?", (trial_id,))

    def queue_again(self, trial_ids) -> None:
        """Back to ``pending`` as if never tried (no lost-lease count, owner or error); one transaction."""
        with self.transaction() as c:
            c.executemany("UPDATE trials SET state='pending', attempts=0, worker=NULL, error=NULL WHERE id=?",
                          [(i,) for i in trial_ids])

    def add_history(self, trial_id: int, epoch: int, metric: float | None, metrics: dict, conn,
                    attempt: int | None = None, reported_at: float | None = None) -> None:
        """One epoch's metrics; a resumed attempt that repeats an epoch replaces it (one row per epoch)."""
        conn.execute("INSERT OR REPLACE INTO history (trial_id, epoch, metric, metrics, attempt, reported_at) "
                     "VALUES (?,?,?,?,?,?)",
                     (trial_id, epoch, metric, json.dumps(metrics, default=float), attempt, reported_at))

    def drop_history_after(self, trial_id: int, epoch: int, conn) -> None:
        """Forget the trial's epochs after ``epoch`` (an earlier attempt's)."""
        conn.execute("DELETE FROM history WHERE trial_id=? AND epoch>?", (trial_id, epoch))

    def epoch_history(self, trial: Trial) -> list[dict]:
        return [json.loads(m) for (m,) in self.conn.execute(
            "SELECT metrics FROM history WHERE trial_id=? ORDER BY epoch", (trial.id,))]

    def set_ranks(self, sweep_id: str, ranks: dict[str, int]) -> None:
        with self.transaction() as c:
            c.execute("UPDATE trials SET rank=NULL WHERE sweep_id=?", (sweep_id,))
            c.executemany("UPDATE trials SET rank=? WHERE sweep_id=? AND run_id=?",
                          [(r, sweep_id, run_id) for run_id, r in ranks.items()])
