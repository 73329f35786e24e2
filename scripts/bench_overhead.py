"""Bench section ``overhead``: ``trainer_overhead_ratio`` and its parts (scripts/bench.py's docstring)."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench_common import emit


def _overhead_cfg(work: Path, data: Path, epochs: int, i: int):
    from cvtrain.config import mapping_layer, resolve

    return resolve(mapping_layer(dict(data_dir=str(data), model_name="resnet18", img_size=64, batch_size=32,
                                      epochs=epochs, num_workers=0, progress=False, cache_dir=str(work / "cache"),
                                      output_dir=str(work / f"overhead-{i}"), mode="offline",
                                      system_interval=5.0, log_interval=20), "bench"))


class _Bare:
    """What a hand-written script does, one epoch at a time: train pass + val forward, nothing logged or saved."""

    def __init__(self, bundle, norm):
        import timm
        import torch

        self.bundle, self.norm = bundle, norm
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.model = timm.create_model("resnet18", num_classes=17)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.05)

    def epoch(self, epoch: int) -> float:
        import torch

        t0 = time.perf_counter()
        self.bundle.generator.manual_seed(epoch)
        self.bundle.train_ds.set_epoch(epoch)
        self.model.train()
        for x, y in self.bundle.train_loader:
            loss = self.loss_fn(self.model(self.norm(x)), y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        self.model.eval()
        with torch.no_grad():
            _ = torch.cat([self.model(self.norm(x)).argmax(1) for x, _ in self.bundle.val_loader]).numpy()
        return time.perf_counter() - t0


def _interleaved(ctl, sweep, cfg, work: Path, bare: _Bare) -> dict:
    """One whole trial as a worker runs it, timed from its first epoch's start (setup excluded), with one
    bare epoch run after each of its epochs (inside the epoch report, before the checkpoint): the two
    loops meet the machine's load drift epoch by epoch. The bare epochs' time is taken out of the trial's."""
    from cvtrain.engine import train

    trial = ctl.claim(sweep.id, "bench").trial
    marks: list[float] = []  # the first epoch's start, then each report's end
    bare_s: list[float] = []

    def reporter(epoch, metrics):
        if not marks:  # the first epoch started epoch_time before its report: setup ends there
            marks.append(time.perf_counter() - metrics["epoch_time"])
        answer = ctl.report(trial.id, epoch, metrics, owner=trial.owner)
        bare_s.append(bare.epoch(epoch))
        marks.append(time.perf_counter())
        return None if answer == "stop" else answer  # the same epochs as the bare loop

    result = train(cfg, reporter, wandb_dir=str(work / "wandb"))
    ctl.finish(trial.id, result.state, result.summary, owner=trial.owner)
    end = time.perf_counter()
    busy, bare_total = sum(h["epoch_time"] for h in result.history), sum(bare_s)
    epochs = len(result.history)
    return {"wall": end - marks[0] - bare_total, "bare": bare_total, "busy": busy, "end": end - marks[-1],
            "between": (marks[-1] - marks[0] - busy - bare_total) / epochs}


def bench_overhead(work: Path, reps: int = 6, epochs: int = 3) -> None:
    """Whole instrumented trials (setup excluded) vs a bare loop: see scripts/bench.py's docstring."""
    import torch

    from agent.controller import LocalController
    from agent.store import SQLiteStore
    from cvtrain.demo_data import make_demo_data
    from cvtrain.engine import build_data
    from cvtrain.norm import Normalizer

    data = make_demo_data(work / "data-overhead", per_class=40, test_per_class=1, seed=3)
    ctl = LocalController(SQLiteStore(work / "state-overhead"))
    sweep = ctl.create_sweep({"name": "ovh", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
                              "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
                              "parameters": {"seed": {"values": list(range(reps))}}}, seed=0)
    bundle = build_data(_overhead_cfg(work, data, epochs, 0), torch.device("cpu"))
    norm = Normalizer(torch.device("cpu"), False)
    trials = [_interleaved(ctl, sweep, _overhead_cfg(work, data, epochs, i), work, _Bare(bundle, norm))
              for i in range(reps)][1:]  # the first is warm-up
    pairs = [t["wall"] / t["bare"] for t in trials]
    emit("overhead_workload", f"{epochs} epochs resnet18 at 64 px, {len(bundle.train_ds)} train + {len(bundle.val_ds)} "
                              f"val images, bs 32, {reps - 1} trials, a bare epoch after each of their epochs")
    emit("trainer_trial_s", statistics.median(t["wall"] for t in trials))
    emit("bare_loop_trial_s", statistics.median(t["bare"] for t in trials))
    emit("trainer_overhead_ratio", statistics.median(pairs))
    emit("trainer_overhead_ratio_pairs", " ".join(f"{p:.3f}" for p in pairs))
    # Within each trial: its whole wall time over its own train/eval passes.
    emit("trainer_overhead_ratio_outside_epochs", statistics.median(t["wall"] / t["busy"] for t in trials))
    emit("trainer_between_epochs_ms", 1000 * statistics.median(t["between"] for t in trials))
    emit("trainer_end_s", statistics.median(t["end"] for t in trials))
    emit("trainer_epochs_vs_bare_loop", statistics.median(t["busy"] / t["bare"] for t in trials))
