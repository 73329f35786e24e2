"""Bench section ``augment``: ``augment_batched_speedup`` and ``data_path_cpu_ms_per_img``."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench_common import PY, ROOT, emit, env_for, sweep_mid

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
    mid = {k: sweep_mid(v) for k, v in ranges.items()}
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
