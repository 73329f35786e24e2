"""Bench section ``claim``: ``claim_latency_ms`` and ``report_latency_ms`` (scripts/bench.py's docstring)."""
from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

from bench_common import emit


def bench_claim(work: Path, n_trials: int = 1000, epochs: int = 30) -> None:
    """Claim and report latency in a bayes + hyperband sweep of 1,000 trials x 30 epochs."""
    from agent.controller import LocalController
    from agent.store import SQLiteStore, Trial
    from agent.worker import settle_imports

    store = SQLiteStore(work / "state-claim")
    ctl = LocalController(store)
    models = ["resnet18", "resnet34", "resnet50"]
    sweep = ctl.create_sweep({"name": "claim", "method": "bayes", "metric": {"name": "best_val_f1", "goal": "maximize"},
                              "early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 2},
                              "parameters": {"learning_rate": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
                                             "weight_decay": {"distribution": "uniform", "min": 0.0, "max": 0.1},
                                             "model_name": {"values": models}}}, seed=0)
    rng = random.Random(0)
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1", "lr", "epoch_time")
    with store.transaction() as c:  # as the trainer leaves them: per-epoch metrics and a full summary
        for i in range(n_trials - 1):
            t = Trial(sweep_id=sweep.id, name=f"claim-{i + 1:04d}", state="running", run_id=f"r{i}", attempt=1,
                      params={"learning_rate": 10 ** rng.uniform(-5, -1), "weight_decay": rng.uniform(0, 0.1),
                              "model_name": rng.choice(models)})
            tid = store.insert_trial(c, t)
            top = rng.random()
            for e in range(1, epochs + 1):
                m = {k: rng.random() for k in keys}
                store.add_history(tid, e, top * e / epochs, {"epoch": e, **m, "best_val_f1": top * e / epochs},
                                  conn=c, attempt=1)
            summary = {**{k: rng.random() for k in keys}, "best_val_f1": top, "best_epoch": epochs,
                       "epochs_completed": epochs, "params_total": 21_000_000, "flops": 3.6e9, "state": "finished"}
            store.update_trial(tid, conn=c, state="finished", metric=top, summary=summary)
    settle_imports()  # this process now holds what a worker's does (torch, timm, wandb), settled as a worker's
    running = ctl.claim(sweep.id, "bench").trial  # trial 1,000
    report = []
    for e in range(1, epochs + 1):
        t0 = time.perf_counter()
        ctl.report(running.id, e, {"epoch": e, "best_val_f1": 0.5 * e / epochs}, owner=running.owner)
        report.append(1000 * (time.perf_counter() - t0))
    claim = []
    for _ in range(20):
        t0 = time.perf_counter()
        got = ctl.claim(sweep.id, "bench").trial
        claim.append(1000 * (time.perf_counter() - t0))
        ctl.finish(got.id, "failed", error="bench", owner=got.owner)
    emit("claim_report_workload", f"bayes + hyperband, {n_trials} trials x {epochs} epochs")
    emit("claim_latency_ms_median", statistics.median(claim))
    emit("claim_latency_ms_p95", _p95(claim))
    emit("report_latency_ms_median", statistics.median(report))
    emit("report_latency_ms_p95", _p95(report))


def _p95(values: list[float]) -> float:
    return sorted(values)[round(0.95 * (len(values) - 1))]
