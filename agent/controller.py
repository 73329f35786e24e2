"""The local controller: what the W&B server does for a sweep, on SQLite.

The search itself is W&B's own engine (``sweeps.next_run`` / ``sweeps.stop_runs``),
passed in so tests can drive it. This module adds only what the server adds:
run_cap, metric.target, leases with requeue of lost trials, and early-stop
decisions on every epoch report.
"""
from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .queries import auto_increment_run_suffix, is_finite_number
from .store import SQLiteStore, Sweep, Trial
from .validate import import_sweeps

LEASE_SECONDS = float(os.environ.get("CVSWEEP_LEASE_SECONDS", "60"))
MAX_ATTEMPTS = 3
CLAIMABLE = ("pending", "preempted")
ACTIVE = ("pending", "preempted", "running")


@dataclass
class Claim:
    status: str                      # claimed | wait | paused | done
    trial: Optional[Trial] = None
    reason: str = ""


def plain(value):
    """numpy scalars and arrays from the search engine -> plain Python values."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def new_sweep_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


class LocalController:
    def __init__(self, store: SQLiteStore, lease_seconds: float = LEASE_SECONDS, max_attempts: int = MAX_ATTEMPTS,
                 next_run: Callable | None = None, stop_runs: Callable | None = None,
                 clock: Callable[[], float] = time.time):
        sweeps = import_sweeps()
        self.store = store
        self.lease = lease_seconds
        self.max_attempts = max_attempts
        self.next_run = next_run or sweeps.next_run
        self.stop_runs = stop_runs or sweeps.stop_runs
        self.clock = clock
        self._SweepRun = sweeps.SweepRun

    # -- sweeps ---------------------------------------------------------------
    def create_sweep(self, config: dict, project: str | None = None, entity: str | None = None) -> Sweep:
        sweep = Sweep(id=new_sweep_id(), config=config, name=config.get("name"),
                      project=project or config.get("project"), entity=entity or config.get("entity"))
        self.store.add_sweep(sweep)
        return sweep

    def sweep_dir(self, sweep_id: str) -> Path:
        return self.store.root / "sweeps" / sweep_id

    # -- the search, fed from the store --------------------------------------
    def _sweep_runs(self, sweep: Sweep, trials: list[Trial], with_history: bool):
        metric = sweep.metric_name
        out = []
        for t in trials:
            state = "pending" if t.state == "preempted" else t.state
            summary = {metric: t.metric} if metric and is_finite_number(t.metric) else {}
            history = [{metric: v} for v in t.history if v is not None] if with_history and metric else []
            out.append(self._SweepRun(name=t.name, state=state, config={k: {"value": v} for k, v in t.params.items()},
                                      summary_metrics=summary, history=history))
        return out

    def _target_met(self, sweep: Sweep, trials: list[Trial]) -> Optional[Trial]:
        target = (sweep.config.get("metric") or {}).get("target")
        if target is None:
            return None
        maximize = sweep.goal.startswith("max")
        for t in trials:
            if t.state == "finished" and is_finite_number(t.metric) and (t.metric >= target if maximize else t.metric <= target):
                return t
        return None

    # -- claim ------------------------------------------------------------------
    def claim(self, sweep_id: str, worker: str) -> Claim:
        """One transaction: requeue lost trials, read the runs, ask the search engine, insert, commit."""
        now = self.clock()
        with self.store.transaction() as c:
            sweep = self.store.get_sweep(sweep_id, conn=c)
            if sweep.state in ("finished", "cancelled"):
                return Claim("done", reason=f"sweep {sweep.state}" + (f": {sweep.finished_reason}" if sweep.finished_reason else ""))
            self._requeue_expired(c, sweep_id, now)
            if sweep.state == "paused":
                return Claim("paused", reason="sweep paused; `cvsweep resume` continues it")
            trials = self.store.list_trials(sweep_id, conn=c, with_history=False)
            hit = self._target_met(sweep, trials)
            if hit is not None:
                reason = f"metric.target reached by {hit.name} ({hit.metric:.4g})"
                self.store.set_sweep_state(sweep_id, "finished", reason, conn=c)
                return Claim("done", reason=reason)
            queued = [t for t in trials if t.state in CLAIMABLE]
            if queued:
                t = queued[0]
                self.store.update_trial(t.id, conn=c, state="running", worker=worker, started_at=now,
                                        heartbeat_at=now, lease_expires=now + self.lease)
                return Claim("claimed", self.store.get_trial(t.id),
                             reason="resumed" if t.state == "preempted" or t.attempts else "queued")
            running = [t for t in trials if t.state == "running"]
            cap = sweep.config.get("run_cap")
            if cap is not None and len(trials) >= cap:
                return self._no_new_work(c, sweep_id, running, f"run_cap {cap} reached")
            # Bayes and random draw from numpy's global RNG, which a trainer in this
            # process reseeds every epoch: reseed from the OS so agents do not repeat.
            np.random.seed(int.from_bytes(os.urandom(4), "little"))
            suggestion = self.next_run(sweep.config, self._sweep_runs(sweep, trials, with_history=False))
            if suggestion is None:
                return self._no_new_work(c, sweep_id, running, "search space exhausted")
            params = plain({k: v["value"] for k, v in suggestion.config.items()})
            base = sweep.name or sweep.id
            name = auto_increment_run_suffix([t.name for t in trials], base)
            sdir = self.sweep_dir(sweep_id)
            trial = Trial(sweep_id=sweep_id, name=name, state="running", params=params, run_id=secrets.token_hex(4),
                          worker=worker, started_at=now, heartbeat_at=now, lease_expires=now + self.lease,
                          output_dir=str(sdir / "trials" / name), wandb_dir=str(sdir))
            trial.id = self.store.insert_trial(c, trial)
            trial.created_at = now
            return Claim("claimed", trial, reason="new")

    def _no_new_work(self, c, sweep_id: str, running: list[Trial], reason: str) -> Claim:
        if running:
            return Claim("wait", reason=f"{reason}; {len(running)} trial(s) still running")
        self.store.set_sweep_state(sweep_id, "finished", reason, conn=c)
        return Claim("done", reason=reason)

    def _requeue_expired(self, c, sweep_id: str, now: float) -> None:
        for t in self.store.list_trials(sweep_id, states=("running",), conn=c, with_history=False):
            if t.lease_expires is not None and t.lease_expires < now:
                attempts = t.attempts + 1
                if attempts >= self.max_attempts:
                    self.store.update_trial(t.id, conn=c, state="crashed", attempts=attempts, finished_at=now,
                                            error=f"worker {t.worker} lost {attempts} times (lease expired); not retried")
                else:
                    self.store.update_trial(t.id, conn=c, state="pending", attempts=attempts, worker=None,
                                            error=f"worker {t.worker} lost (lease expired); requeued")

    # -- during a trial -------------------------------------------------------
    def heartbeat(self, trial_id: int, worker: str) -> bool:
        """Extend the lease; False when the trial is no longer this worker's."""
        now = self.clock()
        with self.store.transaction() as c:
            cur = c.execute("UPDATE trials SET heartbeat_at=?, lease_expires=? WHERE id=? AND worker=? AND state='running'",
                            (now, now + self.lease, trial_id, worker))
            return cur.rowcount == 1

    def report(self, trial_id: int, epoch: int, metrics: dict, worker: str | None = None) -> Optional[str]:
        """Store one epoch; answer "stop" when hyperband (or a cancel) says so."""
        now = self.clock()
        with self.store.transaction() as c:
            row = c.execute("SELECT sweep_id, name FROM trials WHERE id=?", (trial_id,)).fetchone()
            sweep = self.store.get_sweep(row["sweep_id"], conn=c)
            metric = sweep.metric_name
            value = metrics.get(metric) if metric else None
            value = float(value) if is_finite_number(value) else None
            self.store.add_history(trial_id, epoch, value, plain(metrics), conn=c)
            cols = dict(heartbeat_at=now, lease_expires=now + self.lease)
            if value is not None:
                cols["metric"] = value
            self.store.update_trial(trial_id, conn=c, **cols)
            if sweep.state == "cancelled":
                self.store.update_trial(trial_id, conn=c, stop_reason="sweep cancelled")
                return "stop"
            if not sweep.config.get("early_terminate") or value is None:
                return None
            trials = self.store.list_trials(sweep.id, conn=c)
            to_stop = self.stop_runs(sweep.config, self._sweep_runs(sweep, trials, with_history=True))
            for r in to_stop:
                if r.name == row["name"]:
                    lines = (r.early_terminate_info or {}).get("lines") or []
                    why = f"hyperband: stopped after epoch {epoch}" + (f"; {lines[-1].strip()}" if lines else "")
                    self.store.update_trial(trial_id, conn=c, stopped=1, stop_reason=why)
                    return "stop"
        return None

    def finish(self, trial_id: int, state: str, summary: dict | None = None, error: str | None = None) -> None:
        """Record a trial's end. ``state``: finished, stopped, preempted, failed, killed."""
        summary = plain(summary or {})
        now = self.clock()
        with self.store.transaction() as c:
            row = c.execute("SELECT sweep_id FROM trials WHERE id=?", (trial_id,)).fetchone()
            sweep = self.store.get_sweep(row["sweep_id"], conn=c)
            cols: dict = dict(summary=summary, finished_at=now, lease_expires=None)
            metric = sweep.metric_name
            if metric and is_finite_number(summary.get(metric)):
                cols["metric"] = float(summary[metric])
            if state == "stopped":
                # Marked finished with its real metric, as W&B does: bayes must not score it as worst.
                if sweep.state == "cancelled":
                    state = "killed"
                else:
                    state = "finished"
                    cols["stopped"] = 1
            if state == "preempted":
                cols.update(worker=None, finished_at=None)
            cols["state"] = state
            if error is not None:
                cols["error"] = error[:4000]
            self.store.update_trial(trial_id, conn=c, **cols)
