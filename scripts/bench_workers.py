"""Bench section ``workers``: trials per hour with 2 workers vs 1, and the workers' memory."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from bench_common import PY, create, emit, env_for, sweep_file, trials


def _smaps(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) / 1024  # MB
    except (OSError, ValueError):
        pass
    return out


N_TRIALS = 16


def bench_workers(work: Path) -> None:
    """Trials per hour, 2 workers vs 1, on the demo workload; per-worker peak RSS and PSS.

    The decoded cache is memory-mapped: its pages count in every worker's RSS but
    once on the machine, which PSS (each shared page split between its users) shows.
    """
    import psutil

    from cvtrain.demo_data import make_demo_data

    data = make_demo_data(work / "data-workers", per_class=24, test_per_class=1, seed=6)
    out = {}
    for workers in (1, 2):
        state = work / f"state-w{workers}"
        sid = create(sweep_file(work, f"w{workers}", data, work / "cache-w", N_TRIALS, epochs=3, img=64,
                                  model="test_resnet"), state)
        proc = subprocess.Popen([PY, "-m", "agent", "agent", sid, "--gpus", "none", "--workers", str(workers)],
                                env=env_for(state), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peaks: dict[int, dict] = {}
        while proc.poll() is None:
            for child in psutil.Process(proc.pid).children():
                m = _smaps(child.pid)
                if m:
                    p = peaks.setdefault(child.pid, {"Rss": 0.0, "Pss": 0.0})
                    p["Rss"], p["Pss"] = max(p["Rss"], m.get("Rss", 0)), max(p["Pss"], m.get("Pss", 0))
            time.sleep(0.5)
        rows = trials(state)
        first, last = min(r["started_at"] for r in rows), max(r["finished_at"] for r in rows)
        # Steady state: each worker from the end of its first trial (imports, wandb service start,
        # first model build: a one-time cost per worker) to the end of its last.
        steady = 0.0
        for w in {r["worker"] for r in rows}:
            ends = sorted(r["finished_at"] for r in rows if r["worker"] == w)
            if len(ends) > 1:
                steady += 3600 * (len(ends) - 1) / (ends[-1] - ends[0])
        out[workers] = {"per_hour": 3600 * len(rows) / (last - first), "steady": steady,
                        "peaks": list(peaks.values())}
    emit("bench_workers_workload", f"{N_TRIALS} trials x 3 epochs, test_resnet at 64 px, 326 train images")
    emit("trials_per_hour_1_worker", out[1]["per_hour"])
    emit("trials_per_hour_2_workers", out[2]["per_hour"])
    emit("two_vs_one_worker_throughput", out[2]["per_hour"] / out[1]["per_hour"])
    emit("steady_trials_per_hour_1_worker", out[1]["steady"])
    emit("steady_trials_per_hour_2_workers", out[2]["steady"])
    emit("two_vs_one_worker_steady_throughput", out[2]["steady"] / out[1]["steady"])
    for w in (1, 2):
        emit(f"worker_peak_rss_mb_{w}_workers", max(p["Rss"] for p in out[w]["peaks"]))
        emit(f"worker_peak_pss_mb_{w}_workers", max(p["Pss"] for p in out[w]["peaks"]))
    emit("decoded_cache_file_mb", sum(p.stat().st_size for p in (work / "cache-w").glob("*.npy")) / 2**20)
