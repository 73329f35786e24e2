"""Bench section ``fixed``: ``per_trial_fixed_cost_s`` against a process per trial (scripts/bench.py's docstring)."""
from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

from bench_common import PY, create, emit, env_for, sweep_file, trials


def bench_fixed_cost(work: Path, data: Path) -> None:
    """Per-trial fixed cost: our worker (in-process trials) vs a fresh `python -m cvtrain` per trial."""
    n = 6
    state = work / "state-fixed"
    sid = create(sweep_file(work, "fixed", data, work / "cache", n), state)
    subprocess.run([PY, "-m", "agent.worker", sid, "--count", str(n)], env=env_for(state, OMP_NUM_THREADS="2"),
                   check=True, capture_output=True)
    rows = trials(state)
    ours = []
    for prev, cur in zip(rows, rows[1:]):  # from one trial's end to the next one's end, minus its training
        ours.append(cur["finished_at"] - prev["finished_at"] - _train_s(cur))
    baseline = []
    for i in range(3):
        out = work / f"proc-{i}"
        t0 = time.perf_counter()
        subprocess.run([PY, "-m", "cvtrain", f"--data_dir={data}", "--model_name=test_resnet", "--img_size=32",
                        "--batch_size=32", "--epochs=1", f"--cache_dir={work / 'cache'}", f"--output_dir={out}",
                        "--progress=False", "--learning_rate=0.001", "--system_interval=5.0"],
                       env=env_for(None, OMP_NUM_THREADS="2", WANDB_DIR=str(work / "wandb-proc")), check=True,
                       capture_output=True, cwd=work)
        wall = time.perf_counter() - t0
        baseline.append(wall - json.loads((out / "summary.json").read_text())["epoch_time"])
    o, b = statistics.median(ours), statistics.median(baseline)
    emit("per_trial_fixed_cost_s", o)
    emit("process_per_trial_fixed_cost_s", b)
    emit("per_trial_fixed_cost_reduction", b / o)


def _train_s(row: dict) -> float:
    return float(json.loads(row["summary"]).get("epoch_time", 0.0)) * json.loads(row["summary"]).get("epochs_completed", 1)
