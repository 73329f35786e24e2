"""Bench section ``sweep``: ``sweep_busy_share`` and where the rest of the workers' time goes
(scripts/bench.py's docstring)."""
from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

from bench_common import PY, ROOT, create, emit, env_for, history, trials


def bench_sweep(work: Path) -> None:
    """The demo sweep as `cvsweep demo` runs it (2 CPU workers): where its workers' time goes."""
    import yaml

    from cvtrain.demo_data import make_demo_data

    data = make_demo_data(work / "data-demo")
    cfg = yaml.safe_load((ROOT / "sweeps" / "demo.yaml").read_text())
    cfg["parameters"]["data_dir"] = {"value": str(data)}
    f = work / "demo.yaml"
    f.write_text(yaml.safe_dump(cfg))
    state = work / "state-demo"
    env = env_for(state, XDG_CACHE_HOME=str(work / "xdg-cache"))  # a cold decoded-image cache, as a first demo has
    sid = create(f, state, "--seed", "0")  # the same suggestions each time, as far as results repeat
    workers = 2
    t0 = time.time()
    subprocess.run([PY, "-m", "agent", "agent", sid, "--gpus", "none", "--workers", str(workers)], env=env,
                   check=True, capture_output=True)
    t1 = time.time()
    rows, hist = trials(state), history(state)
    parts = _sweep_parts(rows, hist, t0, t1)
    wall = workers * (t1 - t0)
    firsts = {min((r for r in rows if r["worker"] == w), key=lambda r: r["started_at"])["id"] for w in {r["worker"] for r in rows}}
    setups = {r["id"]: hist[r["id"]][0]["reported_at"] - hist[r["id"]][0]["epoch_time"] - r["started_at"]
              for r in rows if hist.get(r["id"])}
    emit("sweep_workload", f"sweeps/demo.yaml: {len(trials(state))} trials, {workers} CPU workers")
    emit("sweep_wall_s", t1 - t0)
    parts_busy = parts.pop("busy")
    emit("sweep_busy_share", parts_busy / wall)
    for k, v in parts.items():
        emit(f"sweep_share_{k}", v / wall)
    # A worker's first trial also pays wandb's first run (its launch module) and the cold cache.
    emit("sweep_first_trial_setup_s", statistics.median(v for k, v in setups.items() if k in firsts))
    emit("sweep_later_trial_setup_s", statistics.median(v for k, v in setups.items() if k not in firsts))
    emit("sweep_epoch_s", statistics.median(e["epoch_time"] for h in hist.values() for e in h))
    # Without what a sweep pays once per worker (process start, imports, cold cache: the first trial's
    # setup) and at its end (the tail): the share a longer sweep of the same trials tends to.
    first_setup = sum(v for k, v in setups.items() if k in firsts)
    once = parts["worker_start"] + first_setup + parts["tail"]
    emit("sweep_busy_share_steady", parts_busy / (wall - once))


def _sweep_parts(rows: list[dict], hist: dict[int, list[dict]], t0: float, t1: float) -> dict[str, float]:
    """Seconds, summed over workers: busy (train/eval passes) and each kind of time around them."""
    parts = dict.fromkeys(("busy", "worker_start", "trial_setup", "epoch_overhead", "trial_end", "between_trials",
                           "tail"), 0.0)
    for w in {r["worker"] for r in rows}:
        mine = sorted((r for r in rows if r["worker"] == w), key=lambda r: r["started_at"])
        parts["worker_start"] += mine[0]["started_at"] - t0
        parts["tail"] += t1 - mine[-1]["finished_at"]
        for prev, cur in zip(mine, mine[1:]):
            parts["between_trials"] += cur["started_at"] - prev["finished_at"]
        for r in mine:
            h = hist.get(r["id"], [])
            if not h:
                parts["trial_setup"] += r["finished_at"] - r["started_at"]
                continue
            busy = sum(e["epoch_time"] for e in h)
            parts["busy"] += busy
            first_start = h[0]["reported_at"] - h[0]["epoch_time"]
            parts["trial_setup"] += first_start - r["started_at"]
            parts["epoch_overhead"] += h[-1]["reported_at"] - first_start - busy
            parts["trial_end"] += r["finished_at"] - h[-1]["reported_at"]
    return parts
