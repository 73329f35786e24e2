"""The controller's decisions as pure functions: the sweep, its trials, the report or the ending
and the time in; what to write out. No database here: :class:`agent.controller.LocalController`
reads, decides and applies each decision in one transaction, and tests drive them directly."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

from .queries import is_finite_number
from .records import Sweep, Trial

CLAIMABLE = ("pending", "preempted")


@dataclass(frozen=True)
class Requeue:
    """A running trial whose lease ran out: back to ``pending``, or ``crashed`` after too many losses."""
    trial_id: int
    state: str
    attempts: int
    error: str


@dataclass(frozen=True)
class ClaimDecision:
    status: str                          # claimed | wait | paused | done
    reason: str = ""
    requeue: tuple[Requeue, ...] = ()
    finish_sweep: bool = False           # the sweep is finished, for ``reason``
    trial_id: Optional[int] = None       # claimed: this queued trial ...
    params: Optional[dict] = None        # ... or a new trial with these parameters


def expired_leases(trials: list[Trial], now: float, max_attempts: int) -> tuple[Requeue, ...]:
    out = []
    for t in trials:
        if t.state == "running" and t.lease_expires is not None and t.lease_expires < now:
            attempts = t.attempts + 1
            if attempts >= max_attempts:
                out.append(Requeue(t.id, "crashed", attempts,
                                   f"worker {t.worker} lost {attempts} times (lease expired); not retried"))
            else:
                out.append(Requeue(t.id, "pending", attempts, f"worker {t.worker} lost (lease expired); requeued"))
    return tuple(out)


def target_met(sweep: Sweep, trials: list[Trial]) -> Optional[Trial]:
    target = (sweep.config.get("metric") or {}).get("target")
    if target is None:
        return None
    maximize = sweep.goal.startswith("max")
    for t in trials:
        if t.state == "finished" and is_finite_number(t.metric) and (t.metric >= target if maximize else t.metric <= target):
            return t
    return None


def decide_claim(sweep: Sweep, trials: list[Trial], now: float, max_attempts: int,
                 suggest: Callable[[list[Trial]], Optional[dict]]) -> ClaimDecision:
    """What a claim does, in order: requeue lost trials, honour pause and metric.target, hand out a
    queued trial, enforce run_cap, else ask ``suggest(trials)`` for new parameters. No I/O."""
    if sweep.state in ("finished", "cancelled"):
        return ClaimDecision("done", f"sweep {sweep.state}" + (f": {sweep.finished_reason}" if sweep.finished_reason else ""))
    requeue = expired_leases(trials, now, max_attempts)
    changed = {r.trial_id: r for r in requeue}
    view = [dataclasses.replace(t, state=changed[t.id].state, attempts=changed[t.id].attempts, worker=None)
            if t.id in changed else t for t in trials]
    if sweep.state == "paused":
        return ClaimDecision("paused", "sweep paused; `cvsweep resume` continues it", requeue)
    hit = target_met(sweep, view)
    if hit is not None:
        return ClaimDecision("done", f"metric.target reached by {hit.name} ({hit.metric:.4g})", requeue, True)
    queued = [t for t in view if t.state in CLAIMABLE]
    if queued:
        t = queued[0]
        return ClaimDecision("claimed", "resumed" if t.state == "preempted" or t.attempts else "queued", requeue,
                             trial_id=t.id)
    running = sum(t.state == "running" for t in view)
    cap = sweep.config.get("run_cap")
    if cap is not None and len(view) >= cap:
        return _no_new_work(f"run_cap {cap} reached", running, requeue)
    params = suggest(view)
    if params is None:
        return _no_new_work("search space exhausted", running, requeue)
    return ClaimDecision("claimed", "new", requeue, params=params)


def _no_new_work(reason: str, running: int, requeue: tuple) -> ClaimDecision:
    if running:
        return ClaimDecision("wait", f"{reason}; {running} trial(s) still running", requeue)
    return ClaimDecision("done", reason, requeue, finish_sweep=True)


@dataclass(frozen=True)
class ReportDecision:
    value: Optional[float]                      # the epoch's finite sweep metric, stored with its history
    cols: dict = field(default_factory=dict)    # the trial's columns to set: lease, metric, stop_reason
    stop: bool = False                          # answer "stop" now (the sweep was cancelled)
    judge: bool = False                         # ask hyperband whether the run stops after this epoch


def decide_report(sweep: Sweep, metrics: dict, now: float, lease: float) -> ReportDecision:
    """An epoch report from the trial's owner: extend its lease, keep its latest finite metric; a
    cancelled sweep stops it; with early_terminate and a finite metric, hyperband judges it. No I/O."""
    metric = sweep.metric_name
    value = metrics.get(metric) if metric else None
    value = float(value) if is_finite_number(value) else None
    cols: dict = dict(heartbeat_at=now, lease_expires=now + lease)
    if value is not None:
        cols["metric"] = value
    if sweep.state == "cancelled":
        return ReportDecision(value, {**cols, "stop_reason": "sweep cancelled"}, stop=True)
    return ReportDecision(value, cols, judge=bool(sweep.config.get("early_terminate")) and value is not None)


def decide_finish(sweep: Sweep, state: str, summary: dict, error: str | None, now: float) -> dict:
    """The trial's columns when its owner records its end. ``state``: finished, stopped, preempted,
    failed, killed. No I/O."""
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
    elif state == "finished":  # ran all its epochs: a stop answered at the last one changed nothing
        cols.update(stopped=0, stop_reason=None)
    if state == "preempted":
        cols.update(worker=None, finished_at=None)
    cols["state"] = state
    if error is not None:
        cols["error"] = error[:4000]
    return cols
