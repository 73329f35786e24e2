"""The local controller on a real SQLite file, driven as agents drive it."""
import json
import multiprocessing as mp
import sqlite3

import pytest

from agent.controller import LocalController
from agent.store import SQLiteStore, StoreError
from agent.store_schema import SCHEMA_VERSION

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
        ctl.report(c.trial.id, 1, {"best_val_f1": 0.5}, owner=c.trial.owner)
        ctl.finish(c.trial.id, "finished", {"best_val_f1": 0.5}, owner=c.trial.owner)
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
        ids.append(c.trial)
    c = ctl.claim(sweep.id, "w")
    assert c.status == "wait" and "run_cap 3 reached" in c.reason
    for t in ids:
        ctl.finish(t.id, "finished", {"best_val_f1": 0.1}, owner=t.owner)
    c = ctl.claim(sweep.id, "w")
    assert c.status == "done" and "run_cap 3" in c.reason
    assert ctl.store.get_sweep(sweep.id).state == "finished"
    assert len(ctl.store.list_trials(sweep.id)) == 3


def test_metric_target_finishes_the_sweep(tmp_path):
    ctl = LocalController(SQLiteStore(tmp_path))
    sweep = ctl.create_sweep({**GRID12, "metric": {"name": "best_val_f1", "goal": "maximize", "target": 0.9}})
    a = ctl.claim(sweep.id, "w").trial
    ctl.finish(a.id, "finished", {"best_val_f1": 0.5}, owner=a.owner)
    b = ctl.claim(sweep.id, "w").trial
    ctl.finish(b.id, "finished", {"best_val_f1": 0.95}, owner=b.owner)
    c = ctl.claim(sweep.id, "w")
    assert c.status == "done" and "target reached by" in c.reason and b.name in c.reason
    assert len(ctl.store.list_trials(sweep.id)) == 2


def test_hyperband_stop_is_decided_per_epoch_and_marked_finished_with_real_metric(tmp_path):
    ctl = LocalController(SQLiteStore(tmp_path))
    sweep = ctl.create_sweep(HB)
    for first in (0.5, 0.45):
        good = ctl.claim(sweep.id, "w1").trial
        for epoch, v in enumerate([first, 0.6, 0.7], start=1):
            assert ctl.report(good.id, epoch, {"best_val_f1": v}, owner=good.owner) is None
        ctl.finish(good.id, "finished", {"best_val_f1": 0.7}, owner=good.owner)
    bad = ctl.claim(sweep.id, "w2").trial
    assert ctl.report(bad.id, 1, {"best_val_f1": 0.05}, owner=bad.owner) == "stop"  # judged at its first epoch
    ctl.finish(bad.id, "stopped", {"best_val_f1": 0.05}, owner=bad.owner)
    t = [x for x in ctl.store.list_trials(sweep.id) if x.id == bad.id][0]
    assert t.state == "finished" and t.stopped and t.metric == 0.05
    assert t.stop_reason == "stopped after epoch 1: best_val_f1 0.050 below the band's threshold 0.450"
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
    ctl.finish(a.id, "failed", error="RuntimeError: boom", owner=a.owner)
    b = ctl.claim(sweep.id, "w").trial
    ctl.report(b.id, 1, {"best_val_f1": 0.3}, owner=b.owner)
    ctl.finish(b.id, "stopped", {"best_val_f1": 0.3}, owner=b.owner)
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
    assert ctl.heartbeat(first.id, first.owner)
    clock.t += 11  # w1 dies: no heartbeat, the lease runs out
    again = ctl.claim(sweep.id, "w2")
    assert again.status == "claimed" and again.trial.id == first.id and again.trial.params == first.params
    assert again.trial.attempts == 1 and again.reason == "resumed"
    assert not ctl.heartbeat(first.id, first.owner)  # the old owner no longer holds it
    clock.t += 11
    nxt = ctl.claim(sweep.id, "w3")
    assert nxt.trial.id != first.id  # second loss: not retried forever
    t = [x for x in ctl.store.list_trials(sweep.id) if x.id == first.id][0]
    assert t.state == "crashed" and "lost 2 times" in t.error


def test_preempted_trial_is_claimed_first_and_keeps_its_output_dir(tmp_path):
    ctl = LocalController(SQLiteStore(tmp_path))
    sweep = ctl.create_sweep(GRID12)
    a = ctl.claim(sweep.id, "w1").trial
    ctl.finish(a.id, "preempted", {"best_val_f1": 0.2}, owner=a.owner)
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
    assert ctl.report(t.id, 1, {"best_val_f1": 0.1}, owner=t.owner) == "stop"
    ctl.finish(t.id, "stopped", {"best_val_f1": 0.1}, owner=t.owner)
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


# -- threads ----------------------------------------------------------------------
def test_store_transactions_from_many_threads_at_once_never_raise(tmp_path):
    import threading

    store = SQLiteStore(tmp_path)
    sweep = LocalController(store).create_sweep(GRID12)
    errors, start = [], threading.Barrier(6)

    def writer(i):
        start.wait()
        for j in range(40):
            try:
                with store.transaction() as c:
                    c.execute("UPDATE sweeps SET finished_reason=? WHERE id=?", (f"{i}-{j}", sweep.id))
            except Exception as exc:  # noqa: BLE001 - the test counts every kind
                errors.append(repr(exc))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store.close()


def test_heartbeats_beside_hundreds_of_reports_through_one_controller_never_fail(tmp_path):
    """The worker's two threads: a heartbeat every few ms beside 300 epoch reports, same store and controller."""
    import threading

    ctl = LocalController(SQLiteStore(tmp_path))
    sweep = ctl.create_sweep(HB)
    t = ctl.claim(sweep.id, "w").trial
    stop, beat_errors, beats = threading.Event(), [], [0]

    def beat():
        while not stop.wait(0.002):
            try:
                assert ctl.heartbeat(t.id, t.owner)
                beats[0] += 1
            except Exception as exc:  # noqa: BLE001
                beat_errors.append(repr(exc))

    hb = threading.Thread(target=beat)
    hb.start()
    report_errors = []
    try:
        for epoch in range(1, 301):
            try:
                ctl.report(t.id, epoch, {"best_val_f1": 0.5 + epoch / 1000}, owner=t.owner)
            except Exception as exc:  # noqa: BLE001
                report_errors.append(repr(exc))
    finally:
        stop.set()
        hb.join()
    assert report_errors == [] and beat_errors == []
    assert beats[0] > 0 and len(ctl.store.get_trial(t.id).history) == 300


# -- owners -------------------------------------------------------------------------
def test_a_stale_owner_is_refused_and_writes_nothing(tmp_path):
    from agent.store import LeaseLost

    clock = Clock()
    ctl = LocalController(SQLiteStore(tmp_path), lease_seconds=10, clock=clock)
    sweep = ctl.create_sweep(GRID12)
    first = ctl.claim(sweep.id, "w1").trial
    assert first.attempt == 1
    assert ctl.report(first.id, 1, {"best_val_f1": 0.2}, owner=first.owner) is None
    clock.t += 11
    second = ctl.claim(sweep.id, "w2").trial
    assert second.id == first.id and second.attempt == 2 and second.owner.worker == "w2"
    with pytest.raises(LeaseLost, match=r"held by w2 \(attempt 2\): refused a write from w1 \(attempt 1\)"):
        ctl.report(first.id, 2, {"best_val_f1": 0.9}, owner=first.owner)
    with pytest.raises(LeaseLost):
        ctl.finish(first.id, "finished", {"best_val_f1": 0.9}, owner=first.owner)
    assert not ctl.heartbeat(first.id, first.owner)
    # The same worker name with an older attempt is stale too (a worker restarted under its old name).
    assert not ctl.heartbeat(first.id, type(first.owner)("w2", 1))
    t = ctl.store.get_trial(first.id)
    assert t.state == "running" and t.history == [0.2] and t.metric == 0.2 and t.summary == {}
    assert ctl.report(second.id, 2, {"best_val_f1": 0.4}, owner=second.owner) is None
    ctl.finish(second.id, "finished", {"best_val_f1": 0.4}, owner=second.owner)
    rows = ctl.store.conn.execute("SELECT epoch, attempt FROM history WHERE trial_id=? ORDER BY epoch",
                                  (first.id,)).fetchall()
    assert [tuple(r) for r in rows] == [(1, 1), (2, 2)]
    with pytest.raises(LeaseLost, match="is finished"):
        ctl.report(second.id, 3, {"best_val_f1": 0.5}, owner=second.owner)


def test_a_preempted_trial_claimed_again_gets_a_new_attempt(tmp_path):
    from agent.store import LeaseLost

    ctl = LocalController(SQLiteStore(tmp_path))
    sweep = ctl.create_sweep(GRID12)
    a = ctl.claim(sweep.id, "w1").trial
    ctl.finish(a.id, "preempted", {}, owner=a.owner)
    b = ctl.claim(sweep.id, "w1").trial
    assert b.id == a.id and b.attempt == a.attempt + 1
    with pytest.raises(LeaseLost):
        ctl.report(a.id, 1, {"best_val_f1": 0.1}, owner=a.owner)


# -- stop reasons ---------------------------------------------------------------------
def test_stop_reason_is_this_runs_own_band_in_plain_words(tmp_path):
    """sweeps shares one `lines` list between runs: the last line there is another running run's."""
    ctl = LocalController(SQLiteStore(tmp_path))
    sweep = ctl.create_sweep({**HB, "early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 3}})
    for v in (0.09, 0.01, 0.02):
        t = ctl.claim(sweep.id, "w").trial
        for epoch in (1, 2, 3):
            ctl.report(t.id, epoch, {"best_val_f1": v * epoch / 3}, owner=t.owner)
        ctl.finish(t.id, "finished", {"best_val_f1": v}, owner=t.owner)
    bad = ctl.claim(sweep.id, "w1").trial
    other = ctl.claim(sweep.id, "w2").trial  # running, listed after `bad`: its line comes last
    for epoch in (1, 2, 3):
        ctl.report(other.id, epoch, {"best_val_f1": 0.5}, owner=other.owner)
    for epoch, v in ((1, 0.001), (2, 0.005)):
        assert ctl.report(bad.id, epoch, {"best_val_f1": v}, owner=bad.owner) is None
    assert ctl.report(bad.id, 3, {"best_val_f1": 0.009}, owner=bad.owner) == "stop"
    reason = ctl.store.get_trial(bad.id).stop_reason
    # band 3 holds 0.09, 0.01, 0.02, 0.5 (the other run) and 0.009: the top third ends at 0.09
    assert reason == "stopped after epoch 3: best_val_f1 0.009 below the band's threshold 0.090"


# -- reproducible search ----------------------------------------------------------------
RANDOM3 = {"name": "r", "method": "random", "metric": {"name": "best_val_f1", "goal": "maximize"},
           "parameters": {"learning_rate": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
                          "weight_decay": {"distribution": "uniform", "min": 0.0, "max": 0.1},
                          "model_name": {"values": ["a", "b", "c"]}}}


def _drive(root, config, seed, n, trainer_seed=None):
    """Claim n trials and finish each with a result that depends only on its parameters; between
    claims, reseed the process's RNGs the way a trainer does at every epoch."""
    import random

    import numpy as np

    ctl = LocalController(SQLiteStore(root))
    sweep = ctl.create_sweep(config, seed=seed)
    got = []
    for _ in range(n):
        if trainer_seed is not None:
            random.seed(trainer_seed)
            np.random.seed(trainer_seed)
        t = ctl.claim(sweep.id, "w").trial
        got.append(json.dumps(t.params, sort_keys=True))
        score = 1 / (1 + abs(__import__("math").log10(t.params["learning_rate"]) + 3))
        ctl.finish(t.id, "finished", {"best_val_f1": score}, owner=t.owner)
    return got


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_same_file_seed_and_results_give_the_same_suggestions(tmp_path, method):
    cfg = {**RANDOM3, "method": method}
    a = _drive(tmp_path / "a", cfg, seed=7, n=8, trainer_seed=1)
    b = _drive(tmp_path / "b", cfg, seed=7, n=8, trainer_seed=123)
    assert a == b
    assert _drive(tmp_path / "c", cfg, seed=8, n=8) != a


def test_a_process_that_reseeds_its_rngs_like_a_trainer_still_never_repeats_a_draw(tmp_path):
    got = _drive(tmp_path, RANDOM3, seed=None, n=12, trainer_seed=42)
    assert len(set(got)) == 12


def test_suggestions_leave_the_process_rng_states_as_they_were(tmp_path):
    import random

    import numpy as np

    ctl = LocalController(SQLiteStore(tmp_path))
    sweep = ctl.create_sweep({**RANDOM3, "method": "bayes"}, seed=3)
    random.seed(5)
    np.random.seed(5)
    py, npy = random.getstate(), np.random.get_state()
    ctl.claim(sweep.id, "w")
    assert random.getstate() == py and np.array_equal(np.random.get_state()[1], npy[1])


def test_a_sweep_gets_a_seed_when_none_is_given(tmp_path):
    store = SQLiteStore(tmp_path)
    a = LocalController(store).create_sweep(GRID12)
    b = LocalController(store).create_sweep(GRID12, seed=11)
    assert isinstance(store.get_sweep(a.id).seed, int) and store.get_sweep(b.id).seed == 11


# -- schema -------------------------------------------------------------------------------
_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sweeps (id TEXT PRIMARY KEY, name TEXT, config TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'running',
    project TEXT, entity TEXT, backend TEXT NOT NULL DEFAULT 'local', created_at REAL NOT NULL, finished_reason TEXT);
CREATE TABLE trials (id INTEGER PRIMARY KEY AUTOINCREMENT, sweep_id TEXT NOT NULL REFERENCES sweeps(id),
    name TEXT NOT NULL, run_id TEXT NOT NULL, state TEXT NOT NULL, params TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '{}', metric REAL, stopped INTEGER NOT NULL DEFAULT 0, stop_reason TEXT,
    error TEXT, worker TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, heartbeat_at REAL, lease_expires REAL,
    output_dir TEXT, wandb_dir TEXT, rank INTEGER, UNIQUE (sweep_id, name));
CREATE TABLE history (trial_id INTEGER NOT NULL REFERENCES trials(id), epoch INTEGER NOT NULL, metric REAL,
    metrics TEXT NOT NULL, PRIMARY KEY (trial_id, epoch));
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO sweeps (id, name, config, created_at) VALUES ('old1', 'g', '{"method": "grid", "parameters":
    {"learning_rate": {"values": [0.1, 0.2]}}}', 0);
INSERT INTO trials (sweep_id, name, run_id, state, params, created_at, metric)
    VALUES ('old1', 'g-001', 'r1', 'finished', '{"learning_rate": 0.1}', 0, 0.5);
"""


def test_a_version_1_file_is_migrated_in_place(tmp_path):
    from agent.store import seed_from_id

    conn = sqlite3.connect(tmp_path / "cvsweep.db")
    conn.executescript(_V1)
    conn.close()
    store = SQLiteStore(tmp_path)
    assert store.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert store.get_sweep("old1").seed == seed_from_id("old1")
    c = LocalController(store).claim("old1", "w")
    assert c.status == "claimed" and c.trial.params == {"learning_rate": 0.2} and c.trial.attempt == 1


@pytest.mark.parametrize("strict", [True, False])
def test_cutting_other_histories_to_a_runs_length_leaves_its_hyperband_decision_as_it_was(strict):
    """report() passes histories cut to the reporting run's length: the same decision, less work."""
    import random

    import sweeps

    rng = random.Random(strict)
    cfg = {"method": "random", "metric": {"name": "m", "goal": "maximize"}, "parameters": {"a": {"values": [1]}},
           "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2, "strict": strict}}
    checked = 0
    for _ in range(40):
        hist = {f"r{i}": [rng.random() for _ in range(rng.randint(0, 20))] for i in range(30)}
        running = {n for n in hist if rng.random() < 0.3}

        def runs(depth=None, hist=hist, running=running):
            return [sweeps.SweepRun(name=n, state="running" if n in running else "finished",
                                    history=[{"m": v} for v in h[:depth]]) for n, h in hist.items()]

        full = {r.name for r in sweeps.stop_runs(cfg, runs())}
        for n in running:
            cut = {r.name for r in sweeps.stop_runs(cfg, runs(len(hist[n])))}
            assert (n in cut) == (n in full)
            checked += 1
    assert checked > 100


def test_a_stop_answered_at_the_last_epoch_leaves_the_trial_finished_not_stopped(tmp_path):
    ctl = LocalController(SQLiteStore(tmp_path))
    sweep = ctl.create_sweep(HB)
    for v in (0.9, 0.8):
        good = ctl.claim(sweep.id, "w").trial
        ctl.report(good.id, 1, {"best_val_f1": v}, owner=good.owner)
        ctl.finish(good.id, "finished", {"best_val_f1": v}, owner=good.owner)
    last = ctl.claim(sweep.id, "w").trial
    assert ctl.report(last.id, 1, {"best_val_f1": 0.1}, owner=last.owner) == "stop"  # its only epoch
    ctl.finish(last.id, "finished", {"best_val_f1": 0.1}, owner=last.owner)
    t = ctl.store.get_trial(last.id)
    assert t.state == "finished" and not t.stopped and t.stop_reason is None
