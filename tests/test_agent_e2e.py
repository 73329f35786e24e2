"""End to end: real `cvsweep` processes, real workers, real signals, real W&B offline runs."""
import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from conftest import PY, ROOT, SECRET, assert_secret_absent
from sweep_helpers import cvsweep, cvsweep_env, db_rows, grid12, tiny_params, wait_for

pytestmark = pytest.mark.slow


def _create(tmp_path, cfg, state):
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(cfg))
    res = cvsweep(["create", str(f), "--backend", "local"], state)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


def test_four_workers_run_a_12_point_grid_exactly_once_and_rank_it(tmp_path, demo_dir, cache_dir):
    state = tmp_path / "state"
    sweep_id = _create(tmp_path, grid12(demo_dir, cache_dir), state)
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
    return subprocess.Popen([PY, "-m", "agent", "agent", sweep_id, "--gpus", "none", "--workers", "1"],
                            env=cvsweep_env(state, CVSWEEP_LEASE_SECONDS="3", **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _long_sweep(demo_dir, cache_dir):
    return {"name": "long", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
            "parameters": tiny_params(demo_dir, cache_dir, epochs={"value": 30},
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
    sweep_id = _create(tmp_path, _long_sweep(demo_dir, cache_dir), state)
    proc = _start_agent(state, sweep_id)
    row = wait_for(lambda: _running_with_history(state), timeout=180, every=0.05, what="a running trial")[0]
    worker_pid = int(row["worker"].split(":")[1])
    os.kill(worker_pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "restarting" in out and "resuming from" in out
    t = db_rows(state, "SELECT * FROM trials WHERE id=?", (row["id"],))[0]
    assert t["state"] == "finished" and t["attempts"] == 1
    assert _epochs(state, row["id"]) == list(range(1, 31))
    assert json.loads(t["summary"])["epochs_completed"] == 30
    assert {r["state"] for r in db_rows(state, "SELECT state FROM trials")} == {"finished"}


def test_sigterm_preempts_running_trial_and_next_agent_resumes_it(tmp_path, demo_dir, cache_dir):
    state = tmp_path / "state"
    sweep_id = _create(tmp_path, _long_sweep(demo_dir, cache_dir), state)
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
    assert t["state"] == "finished" and _epochs(state, row["id"]) == list(range(1, 31))


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
