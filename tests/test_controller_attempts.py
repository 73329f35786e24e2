"""What the local controller keeps of a trial's attempts and a sweep's state changes."""
import math

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.controller import LocalController
from agent.store import SQLiteStore, StoreError

HB = {"name": "hb", "method": "random", "metric": {"name": "best_val_f1", "goal": "maximize"},
      "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
      "parameters": {"learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}}}
GRID = {"name": "g", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
        "parameters": {"learning_rate": {"values": [0.001, 0.003, 0.01, 0.03]}}}


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


class Spy:
    """The engine's stop_runs, recording the histories it was given."""

    def __init__(self):
        self.seen = []

    def __call__(self, config, runs):
        self.seen.append({r.name: [row["best_val_f1"] for row in r.history] for r in runs})
        return []


def _history(store, trial_id):
    return [(r["epoch"], r["attempt"]) for r in store.conn.execute(
        "SELECT epoch, attempt FROM history WHERE trial_id=? ORDER BY epoch", (trial_id,))]


def _lose_and_reclaim(ctl, clock, sweep_id, trial):
    clock.t += ctl.lease + 1  # the worker stalls past its lease
    again = ctl.claim(sweep_id, "w2").trial
    assert again.id == trial.id and again.attempt == trial.attempt + 1
    return again


def test_a_requeued_trial_that_starts_over_is_judged_on_its_new_attempt_only(tmp_path):
    clock, spy = Clock(), Spy()
    store = SQLiteStore(tmp_path)
    ctl = LocalController(store, lease_seconds=10, clock=clock, stop_runs=spy)
    sweep = ctl.create_sweep(HB)
    t = ctl.claim(sweep.id, "w1").trial
    for epoch, v in ((1, 0.5), (2, 0.6), (3, 0.7)):
        ctl.report(t.id, epoch, {"best_val_f1": v}, owner=t.owner)
    again = _lose_and_reclaim(ctl, clock, sweep.id, t)
    ctl.report(again.id, 1, {"best_val_f1": 0.2}, owner=again.owner)  # no last.pt: epoch 1 again
    assert _history(store, t.id) == [(1, 2)]
    assert spy.seen[-1][t.name] == [0.2]  # not the earlier attempt's longer history
    assert store.get_trial(t.id).history == [0.2]


def test_a_trial_resumed_from_its_checkpoint_keeps_the_epochs_it_resumed_from(tmp_path):
    clock = Clock()
    store = SQLiteStore(tmp_path)
    ctl = LocalController(store, lease_seconds=10, clock=clock, stop_runs=Spy())
    sweep = ctl.create_sweep(HB)
    t = ctl.claim(sweep.id, "w1").trial
    for epoch, v in ((1, 0.5), (2, 0.6), (3, 0.7)):  # epoch 3 reported, then the worker stalled before saving
        ctl.report(t.id, epoch, {"best_val_f1": v}, owner=t.owner)
    again = _lose_and_reclaim(ctl, clock, sweep.id, t)
    ctl.report(again.id, 3, {"best_val_f1": 0.65}, owner=again.owner)  # resumed from last.pt of epoch 2
    assert _history(store, t.id) == [(1, 1), (2, 1), (3, 2)]
    assert store.get_trial(t.id).history == [0.5, 0.6, 0.65]


def test_a_non_finite_epoch_keeps_later_epochs_in_their_bands(tmp_path):
    spy = Spy()
    store = SQLiteStore(tmp_path)
    ctl = LocalController(store, stop_runs=spy)
    sweep = ctl.create_sweep(HB)
    a = ctl.claim(sweep.id, "w1").trial
    b = ctl.claim(sweep.id, "w2").trial
    for epoch, v in ((1, 0.4), (2, 0.5), (3, 0.6)):
        ctl.report(b.id, epoch, {"best_val_f1": v}, owner=b.owner)
    for epoch, v in ((1, 0.9), (2, math.nan), (3, 0.95)):
        ctl.report(a.id, epoch, {"best_val_f1": v}, owner=a.owner)
    # Epoch 3's value is hyperband's third iteration; the NaN counts as the worst value reported.
    assert spy.seen[-1][a.name] == [0.9, 0.4, 0.95]


def test_cancel_kills_the_trials_still_waiting(tmp_path, monkeypatch):
    store = SQLiteStore(tmp_path)
    ctl = LocalController(store)
    sweep = ctl.create_sweep(GRID)
    running, preempted, requeued = (ctl.claim(sweep.id, f"w{i}").trial for i in range(3))
    ctl.finish(preempted.id, "preempted", {}, owner=preempted.owner)
    store.update_trial(requeued.id, state="pending", worker=None, attempts=1, lease_expires=None)  # a lost lease's
    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path))
    res = CliRunner().invoke(cli, ["cancel", sweep.id])
    assert res.exit_code == 0, res.output
    states = {t.id: (t.state, t.stop_reason) for t in store.list_trials(sweep.id)}
    assert states[preempted.id] == ("killed", "sweep cancelled") and states[requeued.id] == ("killed", "sweep cancelled")
    assert states[running.id][0] == "running"  # it hears the cancel at its next report, and ends killed
    assert ctl.report(running.id, 1, {"best_val_f1": 0.1}, owner=running.owner) == "stop"
    assert ctl.claim(sweep.id, "w4").status == "done"


def test_a_state_change_is_one_conditional_update(tmp_path):
    store = SQLiteStore(tmp_path)
    sweep = LocalController(store).create_sweep(GRID)
    store.change_sweep_state(sweep.id, "cancelled", ("running", "paused"), "cancelled by user")
    statements = []
    store.conn.set_trace_callback(statements.append)
    with pytest.raises(StoreError, match=f"sweep {sweep.id} is cancelled; cannot go to running"):
        store.change_sweep_state(sweep.id, "running", ("paused",))
    store.conn.set_trace_callback(None)
    writes = [s for s in statements if s.lstrip().upper().startswith(("UPDATE", "INSERT", "DELETE"))]
    assert len(writes) == 1 and "state IN" in writes[0]  # decided by the row's state as it is written
    assert store.get_sweep(sweep.id).state == "cancelled"
