"""Shared helpers for the sweep tests: tiny sweep configs and process plumbing."""
import os
import sqlite3
import subprocess
import time

import yaml
from conftest import PY, ROOT


def tiny_params(demo_dir, cache_dir, **over):
    p = {"data_dir": {"value": str(demo_dir)}, "model_name": {"value": "test_resnet"}, "img_size": {"value": 32},
         "batch_size": {"value": 16}, "epochs": {"value": 1}, "num_workers": {"value": 0},
         "cache_dir": {"value": str(cache_dir)}, "system_interval": {"value": 5.0}}
    p.update(over)
    return p


def grid12(demo_dir, cache_dir, **over):
    return {"name": "g12", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
            "parameters": tiny_params(demo_dir, cache_dir, learning_rate={"values": [0.001, 0.003, 0.01, 0.03]},
                                      label_smoothing={"values": [0.0, 0.1, 0.2]}, **over)}


def cvsweep_env(state_dir, **extra):
    env = dict(os.environ)
    env.update(CVSWEEP_DIR=str(state_dir), PYTHONPATH=str(ROOT), WANDB_MODE="offline", **extra)
    return env


def cvsweep(args, state_dir, timeout=600, **extra):
    return subprocess.run([PY, "-m", "agent", *args], env=cvsweep_env(state_dir, **extra), capture_output=True,
                          text=True, timeout=timeout)


def create_local(tmp_path, cfg, state_dir):
    """``cvsweep create`` of the sweep config ``cfg`` on the local backend; its id."""
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(cfg))
    res = cvsweep(["create", str(f), "--backend", "local"], state_dir)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


def db_rows(state_dir, sql, args=()):
    conn = sqlite3.connect(state_dir / "cvsweep.db", timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def wait_for(pred, timeout=120, every=0.2, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
