"""Benchmarks: each figure on its own line as ``name: value``; ratios are measured in one run.

    make bench                      # all of them (about 15 minutes on 2 CPU cores)
    python scripts/bench.py --only overhead,cache,claim,sweep

Each section lives in its own module beside this runner (``bench_<section>.py``; ``fixed`` in
bench_fixed.py); this docstring says what every figure includes and excludes.

Targets (from the issues) and what each figure includes and excludes:

- ``trainer_overhead_ratio`` <= 1.05: wall time of whole trials over a bare PyTorch loop on the
  same data, model, batch size and threads (3 epochs of resnet18 at 64 px, 544 training and 136
  validation images: the demo data at 40 images per class).
  Included: every epoch's train and eval passes, the controller's epoch reports (a real
  LocalController on SQLite, hyperband), checkpoints, W&B offline logging, the system monitor,
  final reports (confusion matrix, per-class table), checkpoint retention, artifacts, summary,
  W&B finish and the controller's finish. Excluded on both sides: setup (data and model build,
  FLOP count, W&B init; ``per_trial_fixed_cost_s`` measures that). The bare loop saves and logs
  nothing. The two alternate epoch by epoch (a bare epoch runs inside each of the trial's epoch reports,
  before that epoch's checkpoint, and its time is taken out of the trial's), so drift in the machine's
  load hits both alike; the first trial is warm-up. Headline: the median over trials of (trial's wall
  time less its bare epochs) / (its bare epochs' time), each trial's also printed.
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
import os
import shutil
import sys
import tempfile
from pathlib import Path

# The sections' modules sit beside this script (on sys.path as its folder); bench_common puts the
# repository root on it for agent and cvtrain.
from bench_augment import bench_augment
from bench_cache import bench_cache
from bench_claim import bench_claim
from bench_common import PY, create, emit, env_for, trials
from bench_finalize import bench_finalize
from bench_fixed import bench_fixed_cost
from bench_overhead import bench_overhead
from bench_pretrained import bench_pretrained
from bench_shift import bench_shift
from bench_sweep import bench_sweep
from bench_workers import bench_workers

SECTIONS = "overhead,cache,fixed,claim,workers,sweep,finalize,augment,pretrained,shift"


def main() -> int:
    ap = argparse.ArgumentParser(description="Benchmarks: each figure as `name: value` (this file's docstring).")
    ap.add_argument("--only", default=SECTIONS, help=f"comma-separated sections (default: all of {SECTIONS})")
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
                    "shift": lambda w: bench_shift(w, emit, create, env_for, trials, PY)}
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
