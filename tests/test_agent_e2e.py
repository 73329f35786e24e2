"""End to end: real `cvsweep` processes, real workers, real signals, real W&B offline runs."""
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import PY, ROOT, SECRET, assert_secret_absent
from sweep_helpers import create_local, cvsweep, cvsweep_env, db_rows, grid12, tiny_params, wait_for

pytestmark = pytest.mark.slow


def test_four_workers_run_a_12_point_grid_exactly_once_and_rank_it(tmp_path, demo_dir, cache_dir):
    state = tmp_path / "state"
    sweep_id = create_local(tmp_path, grid12(demo_dir, cache_dir), state)
    res = cvsweep(["agent", sweep_id, "--gpus", "none", "--workers", "4"], state, WANDB_API_KEY=SECRET)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    rows = db_rows(state, "SELECT name, params, state FROM trials")
    assert len(rows) == 12 and len({r["params"] for r in rows}) == 12
    assert {r["state"] for r in rows} == {"finished"}
    assert "trials: 12 done" in res.stdout
    runs = list((state / "sweeps" / sweep_id / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 12
    board = cvsweep(["leaderboard", sweep_id, "--format", "json", "--top", "20", "--write-back"], state)
    assert board.returncode == 0, board.stderr
    lb = json.loads(board.stdout)
    assert len(lb) == 12 and [r["rank"] for r in lb] == list(range(1, 13))
    assert all(lb[i]["metric"] >= lb[i + 1]["metric"] for i in range(11))
    assert set(lb[0]["config"]) >= {"learning_rate", "label_smoothing"}
    assert sorted(r["rank"] for r in db_rows(state, "SELECT rank FROM trials")) == list(range(1, 13))
    assert len(list((state / "sweeps" / sweep_id / "wandb").glob("offline-run-*"))) == 13  # + summary run
    assert_secret_absent(state)


def _start_agent(state, sweep_id, **extra):
    """One worker with the default lease (60 s): a heartbeat that stalls on a loaded machine never loses
    a live worker its trial; a test that needs a lease to run out says so (:func:`_expire_lease`)."""
    return subprocess.Popen([PY, "-m", "agent", "agent", sweep_id, "--gpus", "none", "--workers", "1"],
                            env=cvsweep_env(state, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _expire_lease(state, trial_id):
    """The lease of a dead worker's trial runs out now, instead of after its length."""
    conn = sqlite3.connect(state / "cvsweep.db", timeout=30)
    try:
        with conn:
            conn.execute("UPDATE trials SET lease_expires=0 WHERE id=? AND state='running'", (trial_id,))
    finally:
        conn.close()


# Long enough that a trial is still running well after its second epoch, when these tests strike.
LONG_EPOCHS = 10


def _long_sweep(demo_dir, cache_dir):
    return {"name": "long", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
            "parameters": tiny_params(demo_dir, cache_dir, epochs={"value": LONG_EPOCHS},
                                      learning_rate={"values": [0.003, 0.01]})}


def _running_with_history(state):
    rows = db_rows(state, "SELECT t.id, t.worker, COUNT(h.epoch) AS n FROM trials t JOIN history h "
                          "ON h.trial_id=t.id WHERE t.state='running' GROUP BY t.id")
    return [r for r in rows if r["n"] >= 2]


def _epochs(state, trial_id):
    return [r["epoch"] for r in db_rows(state, "SELECT epoch FROM history WHERE trial_id=? ORDER BY epoch",
                                        (trial_id,))]


def test_kill_9_of_a_worker_requeues_its_trial_which_resumes_and_completes(tmp_path, demo_dir, cache_dir):
    state = tmp_path / "state"
    sweep_id = create_local(tmp_path, _long_sweep(demo_dir, cache_dir), state)
    proc = _start_agent(state, sweep_id)
    row = wait_for(lambda: _running_with_history(state), timeout=180, every=0.05, what="a running trial")[0]
    worker_pid = int(row["worker"].split(":")[1])
    os.kill(worker_pid, signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(worker_pid).wait(timeout=60)  # gone, so no beat of its can follow the expiry
    _expire_lease(state, row["id"])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "restarting" in out and "resuming from" in out
    t = db_rows(state, "SELECT * FROM trials WHERE id=?", (row["id"],))[0]
    assert t["state"] == "finished" and t["attempts"] == 1
    assert _epochs(state, row["id"]) == list(range(1, LONG_EPOCHS + 1))
    assert json.loads(t["summary"])["epochs_completed"] == LONG_EPOCHS
    assert {r["state"] for r in db_rows(state, "SELECT state FROM trials")} == {"finished"}


def test_sigterm_preempts_running_trial_and_next_agent_resumes_it(tmp_path, demo_dir, cache_dir):
    state = tmp_path / "state"
    sweep_id = create_local(tmp_path, _long_sweep(demo_dir, cache_dir), state)
    proc = _start_agent(state, sweep_id)
    row = wait_for(lambda: _running_with_history(state), timeout=180, every=0.05, what="a running trial")[0]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    t = db_rows(state, "SELECT * FROM trials WHERE id=?", (row["id"],))[0]
    assert t["state"] == "preempted"
    done_before = len(_epochs(state, row["id"]))
    assert (state / "sweeps" / sweep_id / "trials" / t["name"] / "checkpoints" / "last.pt").exists()
    again = _start_agent(state, sweep_id)
    out2, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out2[-3000:]
    assert "resuming from" in out2 and f"after epoch {done_before}" in out2
    t = db_rows(state, "SELECT * FROM trials WHERE id=?", (row["id"],))[0]
    assert t["state"] == "finished" and _epochs(state, row["id"]) == list(range(1, LONG_EPOCHS + 1))


def test_trainer_started_as_wandb_agent_starts_it_picks_up_the_sweep_values(tmp_path, demo_dir, cache_dir):
    """Build argv and env with W&B's own agent helpers from our shipped sweep file, then run it."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args
    from wandb.sdk.lib.config_util import save_config_file_from_dict

    sweep_cfg = yaml.safe_load((ROOT / "sweeps" / "demo.yaml").read_text())
    values = {"data_dir": str(demo_dir), "model_name": "test_resnet", "img_size": 32, "epochs": 1,
              "batch_size": 16, "learning_rate": 0.00123, "label_smoothing": 0.1,
              "augment": {"rotate": 0.5, "jpeg": 0.0}, "cache_dir": str(cache_dir), "num_workers": 0,
              "output_dir": str(tmp_path / "trial")}
    command = {"args": {k: {"value": v} for k, v in values.items()}, "run_id": "run0001"}
    param_path = tmp_path / "wandb" / "sweep-sw1" / "config-run0001.yaml"
    save_config_file_from_dict(str(param_path), command["args"])
    sweep_vars = create_sweep_command_args(command)
    sweep_vars.update(interpreter=[sys.executable], program=[], env=["/usr/bin/env"])
    argv = []
    for c in create_sweep_command(sweep_cfg["command"]):
        argv += sweep_vars.get(c[2:-1], []) if c.startswith("${") else [c]
    env = cvsweep_env(tmp_path / "state", WANDB_SWEEP_ID="sw1", WANDB_RUN_ID="run0001",
                      WANDB_SWEEP_PARAM_PATH=str(param_path), WANDB_DIR=str(tmp_path))
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "trial" / "config.yaml").read_text())
    assert saved["learning_rate"] == 0.00123 and saved["label_smoothing"] == 0.1
    assert saved["augment"]["rotate"] == 0.5 and saved["model_name"] == "test_resnet"


# -- who owns a trial, and what the search draws, with workers that really train ------------------
def test_random_search_with_two_training_workers_never_repeats_a_trial(tmp_path, demo_dir, cache_dir):
    """Trainers reseed Python's `random` every epoch, the RNG random search draws from: a worker
    that has trained a trial must still get a new draw."""
    state = tmp_path / "state"
    cfg = {"name": "rnd", "method": "random", "run_cap": 6, "metric": {"name": "best_val_f1", "goal": "maximize"},
           "parameters": tiny_params(demo_dir, cache_dir,
                                     learning_rate={"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
                                     label_smoothing={"distribution": "uniform", "min": 0.0, "max": 0.2})}
    sweep_id = create_local(tmp_path, cfg, state)
    res = cvsweep(["agent", sweep_id, "--gpus", "none", "--workers", "2"], state)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    rows = db_rows(state, "SELECT params, worker, state FROM trials")
    assert len(rows) == 6 and {r["state"] for r in rows} == {"finished"}
    assert len({r["worker"] for r in rows}) == 2
    assert len({r["params"] for r in rows}) == 6, [r["params"] for r in rows]


def test_a_requeued_trial_stops_its_first_worker_which_writes_nothing_more(tmp_path, demo_dir, cache_dir):
    """Worker 1 (a real process) trains; the controller gives its trial to worker 2 meanwhile. Worker 1's
    writes are refused, it stops without touching the trial's outputs, worker 2 resumes and completes."""
    import time

    from agent.controller import LocalController
    from agent.store import SQLiteStore
    from agent.worker import WorkerStop, run_trial

    state = tmp_path / "state"
    cfg = {"name": "own", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
           "parameters": tiny_params(demo_dir, cache_dir, epochs={"value": LONG_EPOCHS})}
    sweep_id = create_local(tmp_path, cfg, state)
    w1 = subprocess.Popen([PY, "-m", "agent.worker", sweep_id, "--count", "1", "--name", "w1"],
                          env=cvsweep_env(state), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    row = wait_for(lambda: _running_with_history(state), timeout=180, every=0.05, what="worker 1's epochs")[0]
    # Worker 2's clock runs ahead of the (default, 60 s) lease: to its controller, worker 1's has run out.
    ctl2 = LocalController(SQLiteStore(state), clock=lambda: time.time() + 1000)
    claim = ctl2.claim(sweep_id, "w2")
    assert claim.status == "claimed" and claim.trial.id == row["id"] and claim.trial.attempt == 2
    out1, _ = w1.communicate(timeout=300)
    assert w1.returncode == 0, out1[-3000:]
    assert "lease lost" in out1 or "refused a write from" in out1, out1[-3000:]
    assert f"trial {claim.trial.name} lost" in out1
    out_dir = state / "sweeps" / sweep_id / "trials" / claim.trial.name
    assert not (out_dir / "summary.json").exists()  # worker 1 wrote no ending
    by_w1 = [r["epoch"] for r in db_rows(state, "SELECT epoch FROM history WHERE trial_id=? AND attempt=1 "
                                                "ORDER BY epoch", (row["id"],))]
    assert by_w1 == list(range(1, len(by_w1) + 1)) and len(by_w1) < LONG_EPOCHS
    from cvtrain import checkpoint as ckpt

    assert ckpt.read(out_dir / "checkpoints" / "last.pt")["state"]["epoch"] == len(by_w1)  # nothing after its loss
    assert run_trial(ctl2, claim.trial, "w2", WorkerStop()) == "finished"
    t = db_rows(state, "SELECT * FROM trials WHERE id=?", (row["id"],))[0]
    assert t["state"] == "finished" and t["attempt"] == 2 and json.loads(t["summary"])["epochs_completed"] == LONG_EPOCHS
    hist = db_rows(state, "SELECT epoch, attempt FROM history WHERE trial_id=? ORDER BY epoch", (row["id"],))
    assert [h["epoch"] for h in hist] == list(range(1, LONG_EPOCHS + 1))  # each epoch once
    assert [h["attempt"] for h in hist] == [1] * len(by_w1) + [2] * (LONG_EPOCHS - len(by_w1))


def test_lease_and_state_dir_from_dotenv_reach_the_workers_and_the_key_does_not(tmp_path, demo_dir, cache_dir):
    """CVSWEEP_LEASE_SECONDS in .env sets the lease; a local worker's environment has no API key."""
    (tmp_path / ".env").write_text(f"CVSWEEP_DIR=dotenv-state\nCVSWEEP_LEASE_SECONDS=4\nWANDB_API_KEY={SECRET}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVSWEEP_")}
    env.update(PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(_long_sweep(demo_dir, cache_dir)))
    made = subprocess.run([PY, "-m", "agent", "create", str(f), "--backend", "local"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    sweep_id, state = made.stdout.strip().splitlines()[-1], tmp_path / "dotenv-state"
    proc = subprocess.Popen([PY, "-m", "agent", "agent", sweep_id, "--gpus", "none", "--workers", "1"], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    row = wait_for(lambda: _running_with_history(state), timeout=180, every=0.05, what="a running trial")[0]
    t = db_rows(state, "SELECT lease_expires - heartbeat_at AS lease, worker FROM trials WHERE id=?", (row["id"],))[0]
    environ = Path(f"/proc/{int(t['worker'].split(':')[1])}/environ").read_bytes().split(b"\0")
    from agent.store import SQLiteStore

    SQLiteStore(state).set_sweep_state(sweep_id, "cancelled", "test")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert t["lease"] == pytest.approx(4.0)
    assert not any(e.startswith(b"WANDB_API_KEY=") for e in environ)
    assert b"CVSWEEP_LEASE_SECONDS=4.0" in environ
    assert_secret_absent(state)


def test_four_ended_resnet10t_trials_leave_at_most_120_mb(tmp_path, demo_dir, cache_dir):
    from agent.store import disk_usage

    state = tmp_path / "state"
    cfg = {"name": "disk", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
           "parameters": tiny_params(demo_dir, cache_dir, model_name={"value": "resnet10t"}, epochs={"value": 2},
                                     learning_rate={"values": [0.001, 0.003, 0.01, 0.03]})}
    sweep_id = create_local(tmp_path, cfg, state)
    res = cvsweep(["agent", sweep_id, "--gpus", "none", "--workers", "2"], state)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert len(db_rows(state, "SELECT 1 FROM trials WHERE state='finished'")) == 4
    used = disk_usage(state)
    assert used <= 120 * 2**20, f"{used / 2**20:.1f} MiB"
    # what stays is best.pt (and, under logged/, the hard link its W&B artifact references: the same file)
    assert sorted(p.name for p in state.glob("sweeps/*/trials/*/checkpoints/*") if p.is_file()) == ["best.pt"] * 4
    status = cvsweep(["status", sweep_id], state)
    assert f"disk: {disk_usage(state / 'sweeps' / sweep_id) / 2**20:.1f} MiB" in status.stdout, status.stdout
