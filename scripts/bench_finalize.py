"""Bench section ``finalize``: what ``cvsweep finalize`` gains over the best single configuration."""
from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

from bench_common import PY, create, emit, env_for, trials


def bench_finalize(work: Path) -> None:
    """`cvsweep finalize` on the demo data: the selected ensemble's nested out-of-fold macro-F1 against
    the best single configuration's (same folds, same views, same run), the equal-weight ensemble's
    against it too (the figure before ensemble selection), and finalize's wall time relative to one
    parent trial. ``finalize_oof_f1_gain`` >= 0 is expected (selection may choose the best single alone).

    Parent: a 6-point grid (2 backbones x 3 learning rates, 8 epochs at 64 px, 2 CPU workers) on the
    demo data (204 train images); finalize: its top 3 configurations x 3 folds, 2 workers. The wall time
    covers the whole command (workers' start, 9 fold trials, test predictions, aggregation, W&B log);
    one trial is the parent trials' median from claim to end.
    """
    import yaml

    from cvtrain.demo_data import make_demo_data

    data = make_demo_data(work / "data-finalize", seed=11)
    state = work / "state-finalize"
    cfg = {"name": "fin", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
           "parameters": {"data_dir": {"value": str(data)}, "img_size": {"value": 64}, "epochs": {"value": 8},
                          "batch_size": {"value": 32}, "cache_dir": {"value": str(work / "cache")},
                          "system_interval": {"value": 5.0}, "model_name": {"values": ["test_resnet", "resnet10t"]},
                          "learning_rate": {"values": [0.001, 0.003, 0.01]}}}
    f = work / "fin.yaml"
    f.write_text(yaml.safe_dump(cfg))
    sid = create(f, state)
    subprocess.run([PY, "-m", "agent", "agent", sid, "--gpus", "none", "--workers", "2"], env=env_for(state),
                   check=True, capture_output=True)
    trial_s = statistics.median(r["finished_at"] - r["started_at"] for r in trials(state))
    t0 = time.perf_counter()
    r = subprocess.run([PY, "-m", "agent", "finalize", sid, "--top", "3", "--folds", "3", "--gpus", "none",
                        "--workers", "2", "-o", str(work / "submission.csv")], env=env_for(state), check=True,
                       capture_output=True, text=True, cwd=work)
    wall = time.perf_counter() - t0
    final = json.loads((state / "sweeps" / sid / "final.json").read_text())
    best_single = final["oof_macro_f1_best_single"]
    emit("finalize_workload", "top 3 of a 6-trial demo sweep x 3 folds, 204 train images, 64 px, 2 CPU workers")
    emit("finalize_oof_macro_f1_selected", final["oof_macro_f1_selected"])
    emit("finalize_oof_macro_f1_equal", final["oof_macro_f1_equal"])
    emit("finalize_oof_macro_f1_best_single", best_single)
    emit("finalize_oof_f1_gain", final["oof_macro_f1_selected"] - best_single)
    emit("finalize_oof_f1_equal_gain", final["oof_macro_f1_equal"] - best_single)
    emit("finalize_p_selected_beats_best_single", final["p_selected_beats_best_single"])
    emit("finalize_weights", json.dumps(final["weights"], sort_keys=True))
    emit("finalize_wall_s", wall)
    emit("finalize_wall_vs_one_trial", wall / trial_s)
    assert r.stdout.strip().splitlines()[-1].startswith("oof_macro_f1: ")
