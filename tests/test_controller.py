"""The local controller on a real SQLite file, driven as agents drive it."""
import json
import multiprocessing as mp
import sqlite3

import pytest

from agent.controller import LocalController
from agent.store import SCHEMA_VERSION, SQLiteStore, StoreError

GRID12 = {"name": "g", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
          "parameters": {"learning_rate": {"values": [0.001, 0.003, 0.01, 0.03]},
                         "label_smoothing": {"values": [0.0, 0.1, 0.2]}}}
HB = {"name": "hb", "method": "random", "metric": {"name": "best_val_f1", "goal": "maximize"},
      "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
      "parameters": {"learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}}}


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def _claim_until_done(root, sweep_id, worker, out):
    store = SQLiteStore(root)
    ctl = LocalController(store)
    got = []
    while True:
        c = ctl.claim(sweep_id, worker)
        if c.status == "done":
            break
        if c.status == "wait":
            continue
        got.append((c.trial.name, json.dumps(c.trial.params, sort_keys=True)))
        ctl.report(c.trial.id, 1, {"best_val_f1": 0.5})
        ctl.finish(c.trial.id, "finished", {"best_val_f1": 0.5})
    out.put(got)


def test_two_agents_never_get_the_same_trial(tmp_path):
    """4 real processes race on one SQLite file over a 12-point grid: exactly 12 distinct trials."""
    store = SQLiteStore(tmp_path)
    sweep = LocalController(store).create_sweep(GRID12)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_claim_until_done, args=(str(tmp_path), sweep.id, f"w{i}", q)) for i in range(4)]
    for p in procs:
        p.start()
    claimed = [item for _ in procs for item in q.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    names = [n for n, _ in claimed]
    configs = [c for _, c in claimed]
    assert len(claimed) == 12 and len(set(names)) == 12 and len(set(configs)) == 12
    assert len(store.list_trials(sweep.id)) == 12
    assert store.get_sweep(sweep.id).state == "finished"


def test_suggestions_are_plain_python_values(tmp_path):
    ctl = LocalController(SQLiteStore(tmp_path))
    sweep = ctl.create_sweep({"method": "random", "parameters": {
        "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
        "epochs": {"distribution": "int_uniform", "min": 1, "max": 5},
        "mixup": {"parameters": {"alpha": {"distribution": "uniform", "min": 0.0, "max": 0.4}}}}})
    t = ctl.claim(sweep.id, "w").trial
    assert type(t.params["learning_rate"]) is float and type(t.params["epochs"]) is int
    assert type(t.params["mixup"]["alpha"]) is float
    stored = ctl.store.list_trials(sweep.id)[0].params
    assert stored == t.params


def test_run_cap_is_enforced_and_the_sweep_finishes(tmp_path):
    ctl = LocalController(SQLiteStore(tmp_path))
    sweep = ctl.create_sweep({**HB, "run_cap": 3, "early_terminate": None} | {"early_terminate": None})
    ids = []
    for _ in range(3):
        c = ctl.claim(sweep.id, "w")
        assert c.status == "claimed"
        ids.append(c.trial.id)
    c = ctl.claim(sweep.id, "w")
    assert c.status == "wait" and "run_cap 3 reached" in c.reason
    for i in ids:
        ctl.finish(i, "finished", {"best_val_f1": 0.1})
    c = ctl.claim(sweep.id, "w")
    assert c.status == "done" and "run_cap 3" in c.reason
    assert ctl.store.get_sweep(sweep.id).state == "finished"
    assert len(ctl.store.list_trials(sweep.id)) == 3


def test_metric_target_finishes_the_sweep(tmp_path):
    ctl = LocalController(SQLiteStore(tmp_path))
    sweep = ctl.create_sweep({**GRID12, "metric": {"name": "best_val_f1", "goal": "maximize", "target": 0.9}})
    a = ctl.claim(sweep.id, "w").trial
    ctl.finish(a.id, "finished", {"best_val_f1": 0.5})
    b = ctl.claim(sweep.id, "w").trial
    ctl.finish(b.id, "finished", {"best_val_f1": 0.95})
    c = ctl.claim(sweep.id, "w")
    assert c.status == "done" and "target reached by" in c.reason and b.name in c.reason
    assert len(ctl.store.list_trials(sweep.id)) == 2


def test_hyperband_stop_is_decided_per_epoch_and_marked_finished_with_real_metric(tmp_path):
    ctl = LocalController(SQLiteStore(tmp_path))
    sweep = ctl.create_sweep(HB)
    for first in (0.5, 0.45):
        good = ctl.claim(sweep.id, "w1").trial
        for epoch, v in enumerate([first, 0.6, 0.7], start=1):
            assert ctl.report(good.id, epoch, {"best_val_f1": v}) is None
        ctl.finish(good.id, "finished", {"best_val_f1": 0.7})
    bad = ctl.claim(sweep.id, "w2").trial
    assert ctl.report(bad.id, 1, {"best_val_f1": 0.05}) == "stop"  # judged at its first epoch
    ctl.finish(bad.id, "stopped", {"best_val_f1": 0.05})
    t = [x for x in ctl.store.list_trials(sweep.id) if x.id == bad.id][0]
    assert t.state == "finished" and t.stopped and t.metric == 0.05
    assert t.stop_reason.startswith("hyperband: stopped after epoch 1")
    assert t.history == [0.05]


def test_failed_and_stopped_trials_feed_the_search_as_wandb_does(tmp_path):
    import sweeps

    seen = []

    def spy(config, runs, **kw):
        seen.append({r.name: (r.state, dict(r.summary_metrics)) for r in runs})
        return sweeps.next_run(config, runs, **kw)

    ctl = LocalController(SQLiteStore(tmp_path), next_run=spy)
    sweep = ctl.create_sweep({**HB, "method": "bayes"})
    a = ctl.claim(sweep.id, "w").trial
    ctl.finish(a.id, "failed", error="RuntimeError: boom")
    b = ctl.claim(sweep.id, "w").trial
    ctl.report(b.id, 1, {"best_val_f1": 0.3})
    ctl.finish(b.id, "stopped", {"best_val_f1": 0.3})
    ctl.claim(sweep.id, "w")
    last = seen[-1]
    assert last[a.name] == ("failed", {})          # bayes imputes it the way W&B does
    assert last[b.name] == ("finished", {"best_val_f1": 0.3})  # not "killed": not scored as worst


def test_lost_worker_trial_is_requeued_with_same_config_then_given_up(tmp_path):
    clock = Clock()
    ctl = LocalController(SQLiteStore(tmp_path), lease_seconds=10, max_attempts=2, clock=clock)
    sweep = ctl.create_sweep(GRID12)
    first = ctl.claim(sweep.id, "w1").trial
    clock.t += 5
    assert ctl.heartbeat(first.id, "w1")
    clock.t += 11  # w1 dies: no heartbeat, the lease runs out
    again = ctl.claim(sweep.id, "w2")
    assert again.status == "claimed" and again.trial.id == first.id and again.trial.params == first.params
    assert again.trial.attempts == 1 and again.reason == "resumed"
    assert not ctl.heartbeat(first.id, "w1")  # the old owner no longer holds it
    clock.t += 11
    nxt = ctl.claim(sweep.id, "w3")
    assert nxt.trial.id != first.id  # second loss: not retried forever
    t = [x for x in ctl.store.list_trials(sweep.id) if x.id == first.id][0]
    assert t.state == "crashed" and "lost 2 times" in t.error


def test_preempted_trial_is_claimed_first_and_keeps_its_output_dir(tmp_path):
    ctl = LocalController(SQLiteStore(tmp_path))
    sweep = ctl.create_sweep(GRID12)
    a = ctl.claim(sweep.id, "w1").trial
    ctl.finish(a.id, "preempted", {"best_val_f1": 0.2})
    b = ctl.claim(sweep.id, "w2")
    assert b.trial.id == a.id and b.trial.output_dir == a.output_dir and b.trial.attempts == 0


def test_pause_resume_and_cancel(tmp_path):
    store = SQLiteStore(tmp_path)
    ctl = LocalController(store)
    sweep = ctl.create_sweep(GRID12)
    t = ctl.claim(sweep.id, "w").trial
    store.set_sweep_state(sweep.id, "paused")
    assert ctl.claim(sweep.id, "w").status == "paused"
    store.set_sweep_state(sweep.id, "running")
    assert ctl.claim(sweep.id, "w").status == "claimed"
    store.set_sweep_state(sweep.id, "cancelled")
    assert ctl.report(t.id, 1, {"best_val_f1": 0.1}) == "stop"
    ctl.finish(t.id, "stopped", {"best_val_f1": 0.1})
    assert [x for x in store.list_trials(sweep.id) if x.id == t.id][0].state == "killed"
    assert ctl.claim(sweep.id, "w").status == "done"


def test_schema_version_mismatch_says_what_to_do(tmp_path):
    SQLiteStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "cvsweep.db")
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version .* move .* aside"):
        SQLiteStore(tmp_path)


def test_database_is_in_wal_mode(tmp_path):
    store = SQLiteStore(tmp_path)
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
