"""The local controller: what the W&B server does for a sweep, on SQLite.

The search itself is W&B's own engine (``sweeps.next_run`` / ``sweeps.stop_runs``),
passed in so tests can drive it. This module adds only what the server adds:
run_cap, metric.target, leases with requeue of lost trials, and early-stop
decisions on every epoch report.

Decide, then do: :mod:`agent.decisions` holds the pure functions (``decide_claim``,
``decide_report``, ``decide_finish``) from the sweep, its trials and the report or
ending to what to write; ``claim``, ``report`` and ``finish`` read, decide and apply
the decision in one transaction. All SQL is the store's.

Who owns a trial: a claim gives a worker a lease and an attempt number
(:class:`~agent.store.Owner`). Every later write about the trial (heartbeat,
epoch report, finish) names that owner and is refused, in the same transaction,
when the trial has since been given to another attempt: ``heartbeat`` answers
False, ``report`` and ``finish`` raise :class:`~agent.store.LeaseLost`.

Reproducible search: every suggestion runs with Python's ``random`` and numpy's
global RNG (the two the engine draws from) seeded from (sweep seed, number of
trials), and the process's RNG states restored afterwards. The same sweep file,
seed and results give the same suggestions; two claims never share a seed.
"""
from __future__ import annotations

import contextlib
import random
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from .decisions import ClaimDecision, decide_claim, decide_finish, decide_report
from .queries import auto_increment_run_suffix, is_finite_number
from .settings import DEFAULT_LEASE_SECONDS
from .store import LeaseLost, Owner, SQLiteStore, Sweep, Trial, seed_from_id
from .validate import import_sweeps

MAX_ATTEMPTS = 3


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


def path_safe(name: str) -> str:
    """``name`` as one directory name: separators and anything else outside ``[A-Za-z0-9._-]`` become ``_``,
    leading dots go. A sweep's ``name:`` is the user's text; a trial's directory must stay in its sweep's."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return safe or "trial"


def new_sweep_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


def new_sweep_seed() -> int:
    return secrets.randbelow(2**31)


# -- seeding ------------------------------------------------------------------
@contextlib.contextmanager
def seeded_rngs(seed: int, n_trials: int) -> Iterator[None]:
    """Python's ``random`` and numpy's global RNG seeded from (seed, n_trials); restored on exit."""
    py_state, np_state = random.getstate(), np.random.get_state()
    py_seed, np_seed = np.random.SeedSequence([int(seed), int(n_trials)]).generate_state(2)
    random.seed(int(py_seed))
    np.random.seed(int(np_seed))
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


# -- the claim, decided ---------------------------------------------------------
def _worst(values: list, goal: str) -> Optional[float]:
    """The worst finite value for ``goal`` (None when there is none)."""
    finite = [v for v in values if is_finite_number(v)]
    if not finite:
        return None
    return min(finite) if goal.startswith("max") else max(finite)


# -- why hyperband stopped a run ----------------------------------------------------
def _num(x: float) -> str:
    return f"{x:.3f}" if x == 0 or 0.001 <= abs(x) < 1e4 else f"{x:.3g}"


def hyperband_reason(sweep_config: dict, run, metric: str, maximize: bool, epoch: int) -> str:
    """This run's own band, value and threshold, in the metric's own sign.

    ``sweeps`` gives every run the same ``lines`` list (its last line may be another run's)
    and writes negated values for a maximised metric; the bands and thresholds it
    returns, with this run's history and the strictness it used, say it plainly.
    """
    # lazy: W&B's engine loads once, through import_sweeps (its warnings filtered), when the controller starts
    from sweeps.hyperband_stopping import hyperband_baseline_validate_and_fill

    info = run.early_terminate_info or {}
    history = run.metric_history(metric, filter_invalid=True)
    reached = [(b, t) for b, t in zip(info.get("bands", []), info.get("thresholds", [])) if b <= len(history)]
    if not reached:
        return f"stopped after epoch {epoch} by hyperband"
    band, threshold = reached[-1]
    strict = hyperband_baseline_validate_and_fill(sweep_config)["early_terminate"].get("strict") is True
    if strict:
        value = history[band - 1]
    else:
        value = max(history) if maximize else min(history)
    threshold = -threshold if maximize else threshold
    where = f" at epoch {band}" if strict and band != len(history) else ""
    return (f"stopped after epoch {epoch}: {metric} {_num(value)}{where} {'below' if maximize else 'above'} "
            f"the band's threshold {_num(threshold)}")


# -----------------------------------------------------------------------------
class LocalController:
    def __init__(self, store: SQLiteStore, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                 max_attempts: int = MAX_ATTEMPTS, next_run: Callable | None = None,
                 stop_runs: Callable | None = None, clock: Callable[[], float] = time.time):
        sweeps = import_sweeps()
        self.store = store
        self.lease = float(lease_seconds)
        self.max_attempts = max_attempts
        self.next_run = next_run or sweeps.next_run
        self.stop_runs = stop_runs or sweeps.stop_runs
        self.clock = clock
        self._SweepRun = sweeps.SweepRun
        self._blas = None

    @property
    def heartbeat_seconds(self) -> float:
        return self.lease / 4

    # -- sweeps ---------------------------------------------------------------
    def create_sweep(self, config: dict, project: str | None = None, entity: str | None = None,
                     seed: int | None = None) -> Sweep:
        """Register a sweep; ``seed`` (drawn when None) makes its search replayable."""
        sweep = Sweep(id=new_sweep_id(), config=config, name=config.get("name"),
                      project=project or config.get("project"), entity=entity or config.get("entity"),
                      seed=new_sweep_seed() if seed is None else int(seed))
        self.store.add_sweep(sweep)
        return sweep

    def sweep_dir(self, sweep_id: str) -> Path:
        return self.store.root / "sweeps" / sweep_id

    # -- the search, fed from the store --------------------------------------
    def _sweep_runs(self, sweep: Sweep, trials: list[Trial], with_history: bool, with_config: bool = True,
                    depth: int | None = None):
        """``SweepRun`` records for the engine; ``depth`` cuts every history to its first values.

        Hyperband's n-th iteration is a run's n-th finite value: an epoch whose metric was not finite
        (stored as None) counts as the worst value any run reported, so later epochs keep their bands.
        """
        metric = sweep.metric_name
        worst = _worst([v for t in trials for v in t.history], sweep.goal) if with_history else None
        out = []
        for t in trials:
            state = "pending" if t.state == "preempted" else t.state
            summary = {metric: t.metric} if metric and is_finite_number(t.metric) else {}
            history = [{metric: worst if v is None else v} for v in t.history[:depth]
                       if v is not None or worst is not None] if with_history and metric else []
            config = {k: {"value": v} for k, v in t.params.items()} if with_config else {}
            out.append(self._SweepRun(name=t.name, state=state, config=config, summary_metrics=summary,
                                      history=history))
        return out

    def _one_blas_thread(self, method: str):
        """Bayes fits a Gaussian process on <= 100 points: a second BLAS thread only spins, and next to
        training workers it made a claim 5x slower (measured: 363 ms vs 71 ms at 1,000 trials)."""
        if method != "bayes":
            return contextlib.nullcontext()
        if self._blas is None:
            import sweeps.bayes_search  # noqa: F401 - loads scipy's own BLAS, which the limit must see
            from threadpoolctl import ThreadpoolController  # lazy: bayes sweeps only

            self._blas = ThreadpoolController()
        return self._blas.limit(limits=1, user_api="blas")

    def _suggest(self, sweep: Sweep, trials: list[Trial]) -> Optional[dict]:
        seed = sweep.seed if sweep.seed is not None else seed_from_id(sweep.id)
        with seeded_rngs(seed, len(trials)), self._one_blas_thread(sweep.config.get("method")):
            suggestion = self.next_run(sweep.config, self._sweep_runs(sweep, trials, with_history=False))
        if suggestion is None:
            return None
        return plain({k: v["value"] for k, v in suggestion.config.items()})

    # -- claim ------------------------------------------------------------------
    def claim(self, sweep_id: str, worker: str) -> Claim:
        """One transaction: read the sweep and its trials, decide (:func:`decide_claim`), apply, commit."""
        now = self.clock()
        with self.store.transaction() as c:
            sweep = self.store.get_sweep(sweep_id, conn=c)
            trials = [] if sweep.state in ("finished", "cancelled") else \
                self.store.trials_for_search(sweep_id, conn=c)
            decision = decide_claim(sweep, trials, now, self.max_attempts, lambda ts: self._suggest(sweep, ts))
            return self._apply(c, sweep, trials, decision, worker, now)

    def _apply(self, c, sweep: Sweep, trials: list[Trial], d: ClaimDecision, worker: str, now: float) -> Claim:
        for r in d.requeue:
            if r.state == "crashed":
                self.store.update_trial(r.trial_id, conn=c, state="crashed", attempts=r.attempts, finished_at=now,
                                        lease_expires=None, error=r.error)
            else:
                self.store.update_trial(r.trial_id, conn=c, state="pending", attempts=r.attempts, worker=None,
                                        lease_expires=None, error=r.error)
        if d.finish_sweep:
            self.store.set_sweep_state(sweep.id, "finished", d.reason, conn=c)
        if d.status != "claimed":
            return Claim(d.status, reason=d.reason)
        lease = dict(state="running", worker=worker, started_at=now, heartbeat_at=now, lease_expires=now + self.lease)
        if d.trial_id is not None:
            self.store.update_trial(d.trial_id, conn=c, **lease)
            self.store.next_attempt(d.trial_id, conn=c)
            return Claim("claimed", self.store.get_trial(d.trial_id, conn=c), reason=d.reason)
        name = auto_increment_run_suffix([t.name for t in trials], sweep.name or sweep.id)
        sdir = self.sweep_dir(sweep.id)
        trial = Trial(sweep_id=sweep.id, name=name, params=d.params, run_id=secrets.token_hex(4), attempt=1,
                      output_dir=str(sdir / "trials" / path_safe(name)), wandb_dir=str(sdir), created_at=now, **lease)
        trial.id = self.store.insert_trial(c, trial)
        return Claim("claimed", trial, reason=d.reason)

    # -- during a trial: every write names its owner ---------------------------------
    def heartbeat(self, trial_id: int, owner: Owner) -> bool:
        """Extend the lease; False when the trial is no longer ``owner``'s."""
        now = self.clock()
        return self.store.extend_lease(trial_id, owner, now, now + self.lease)

    def report(self, trial_id: int, epoch: int, metrics: dict, *, owner: Owner) -> Optional[str]:
        """Store one epoch and extend the lease; answer "stop" when hyperband (or a cancel) says so.

        A requeued trial's history is its latest attempt's: the attempt's first report drops every later
        epoch of an earlier attempt, so a restart from scratch is judged on its own epochs and a resume
        from ``last.pt`` keeps those it resumed from (the checkpoint's model produced them).

        Raises LeaseLost, writing nothing, when ``owner`` no longer holds the trial.
        """
        now = self.clock()
        with self.store.transaction() as c:
            row = self.store.owned_trial(trial_id, owner, conn=c)
            sweep = self.store.get_sweep(row["sweep_id"], conn=c)
            d = decide_report(sweep, metrics, now, self.lease)
            self.store.add_history(trial_id, epoch, d.value, plain(metrics), conn=c, attempt=owner.attempt,
                                   reported_at=now)
            # Epochs after this one are an earlier attempt's: a restart from scratch (epoch 1) drops them
            # all, a resume from last.pt keeps the epochs it resumed from. Hyperband judges this attempt.
            self.store.drop_history_after(trial_id, epoch, conn=c)
            self.store.update_trial(trial_id, conn=c, **d.cols)
            if d.stop:
                return "stop"
            why = self._hyperband(c, sweep, trial_id, row["name"], epoch) if d.judge else None
            if why:
                self.store.update_trial(trial_id, conn=c, stopped=1, stop_reason=why)
                return "stop"
        return None

    def _hyperband(self, c, sweep: Sweep, trial_id: int, name: str, epoch: int) -> Optional[str]:
        """Why hyperband stops this run after ``epoch``, or None when it goes on."""
        trials = self.store.trials_for_search(sweep.id, conn=c, with_params=False, with_history=True)
        # Hyperband judges this run at its latest band <= its own epochs, from the other runs' values
        # at those bands: histories cut to this run's length give the same decision, for less work.
        depth = len(next(t.history for t in trials if t.id == trial_id))
        runs = self._sweep_runs(sweep, trials, with_history=True, with_config=False, depth=depth)
        for r in self.stop_runs(sweep.config, runs):
            if r.name == name:
                return hyperband_reason(sweep.config, r, sweep.metric_name, sweep.goal.startswith("max"), epoch)
        return None

    def finish(self, trial_id: int, state: str, summary: dict | None = None, error: str | None = None, *,
               owner: Owner) -> None:
        """Record a trial's end. ``state``: finished, stopped, preempted, failed, killed.

        Raises LeaseLost, writing nothing, when ``owner`` no longer holds the trial.
        """
        summary = plain(summary or {})
        now = self.clock()
        with self.store.transaction() as c:
            row = self.store.owned_trial(trial_id, owner, conn=c)
            sweep = self.store.get_sweep(row["sweep_id"], conn=c)
            self.store.update_trial(trial_id, conn=c, **decide_finish(sweep, state, summary, error, now))


__all__ = ["Claim", "LeaseLost", "LocalController", "Owner", "hyperband_reason", "seeded_rngs"]
