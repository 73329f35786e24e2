"""Training throughput on one GPU: our data path against timm's train.py pipeline, same data, same GPU.

    python scripts/gpu_train_bench.py                      # ~2-3 minutes on one GPU
    python scripts/gpu_train_bench.py --allow-cpu --model test_resnet --img-size 64 --images 68 --seconds 3
                                                           # a smoke run of the code on a CPU (no GPU figure)

resnet34 at 224 px, bf16 autocast, channels_last, AdamW, batch 128, on document-sized JPEGs
(754x1000 synthetic pages, ImageFolder layout). The process and its loader workers are pinned
to ``--cores`` CPU cores (2: our users' share per GPU). Each variant warms up, then trains for
``--seconds``; images per second are counted between two CUDA synchronisations.

- gpu_train_img_s: cvtrain's path: decoded cache, batched slicing, next batch copied while the
  current trains, augmentation batched on the GPU (the documents sweep's middle strengths).
- gpu_train_img_s_cpu_augment: the same cache and loader, augmentation per sample in the
  workers (augment_on=cpu): what the cache alone buys.
- gpu_train_img_s_timm: timm's create_loader as train.py uses it: JPEG decoded every epoch,
  RandomResizedCrop, flip, colour jitter per sample in the workers, normalised on the GPU.
- gpu_train_img_s_no_data: one batch resident on the GPU, no loader: the model's ceiling.
- gpu_train_speedup_vs_timm = gpu_train_img_s / gpu_train_img_s_timm (target >= 1.5).

Without CUDA it exits with status 2 and measures nothing, unless --allow-cpu.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

from bench_common import sweep_mid  # beside this script: the sweep's middle, as make bench takes it

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def emit(name: str, value) -> None:
    print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}", flush=True)


def _write_page(job) -> None:
    from PIL import Image

    from cvtrain.demo_data import _page, _photograph

    i, cls, path = job
    rng = random.Random(i)
    _photograph(_page(cls, rng), rng).resize((754, 1000), Image.BICUBIC).save(path, "JPEG", quality=90)


def make_documents(root: Path, n: int) -> Path:
    """``n`` document-sized JPEGs in class folders (17 classes), written with every core."""
    jobs = []
    for i in range(n):
        cls = i % 17
        (root / f"c{cls:02d}").mkdir(parents=True, exist_ok=True)
        jobs.append((i, cls, root / f"c{cls:02d}" / f"{i:05d}.jpg"))
    with Pool(os.cpu_count()) as pool:
        pool.map(_write_page, jobs, chunksize=8)
    return root


def measure(batches, step, seconds: float, warmup: int, sync) -> float:
    """Images per second over ``seconds`` of training after ``warmup`` steps; ``batches()`` is re-entered per epoch."""
    done, n, t0 = 0, 0, None
    while True:
        for x, y in batches():
            step(x, y)
            done += 1
            if done == warmup:
                sync()
                t0 = time.perf_counter()
            elif t0 is not None:
                n += y.shape[0]
                if time.perf_counter() - t0 >= seconds:
                    sync()
                    return n / (time.perf_counter() - t0)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet34")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--images", type=int, default=1536)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=int, default=15, help="steps before timing")
    ap.add_argument("--cores", type=int, default=2, help="CPU cores for the process and its loader workers")
    ap.add_argument("--workers", type=int, default=2, help="loader workers (both paths)")
    ap.add_argument("--work", default=None, help="directory for the images and the cache (default: a temp dir)")
    ap.add_argument("--allow-cpu", action="store_true", help="smoke-run on a CPU; the figures are not GPU figures")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    return ap.parse_args()


def our_loader(a, data: Path, work: Path, device, mid: dict, augment_on: str):
    """The project's loader (decoded cache, batched augmentation on ``augment_on``); re-entered per epoch."""
    from cvtrain.config import mapping_layer, resolve
    from cvtrain.engine import build_data

    cfg = resolve(mapping_layer(dict(data_dir=str(data), model_name=a.model, img_size=a.img_size,
                                     batch_size=a.batch_size, num_workers=a.workers, augment=mid,
                                     augment_on=augment_on, cache_dir=str(work / "cache"), progress=False,
                                     seed=0), "gpu_train_bench"))
    bundle = build_data(cfg, device)  # builds the decoded cache once (all cores: affinity is set after)
    epoch = iter(range(1, 10**9))

    def batches():
        bundle.train_ds.set_epoch(next(epoch))
        return iter(bundle.train_loader)
    return batches


def trainer(a, device, normalize):
    """A fresh model's bf16 channels_last training step."""
    import timm
    import torch

    model = timm.create_model(a.model, num_classes=17).to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        x = normalize(x) if x.dtype == torch.uint8 else x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn(model(x), y.to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> int:
    a = parse_args()
    import torch

    if not torch.cuda.is_available() and not a.allow_cpu:
        print("gpu_train_bench: no CUDA GPU here; nothing measured (--allow-cpu smoke-runs the code on a CPU)",
              file=sys.stderr)
        return 2
    import yaml
    from timm.data import create_dataset, create_loader

    from cvtrain.norm import Normalizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(a.work or tempfile.mkdtemp(prefix="gpu-train-bench-"))
    data = work / "documents"
    if not data.exists():
        t0 = time.perf_counter()
        make_documents(data, a.images)
        emit("data_s", time.perf_counter() - t0)
    sweep = yaml.safe_load((ROOT / "sweeps" / "documents-bayes-hyperband.yaml").read_text())
    mid = {k: sweep_mid(v) for k, v in sweep["parameters"]["augment"]["parameters"].items()}
    ours = {on: our_loader(a, data, work, device, mid, on) for on in ("device", "cpu")}
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:a.cores])
    torch.set_num_threads(a.cores)
    emit("gpu_bench_setup", f"{torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU (smoke run)'}, "
                            f"{a.model} {a.img_size}px bf16 channels_last batch {a.batch_size}, {a.images} "
                            f"754x1000 JPEGs, {a.cores} cores, {a.workers} workers, augment {mid}")

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    normalize = Normalizer(device, channels_last=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out = {}
    x0 = torch.randint(0, 256, (a.batch_size, 3, a.img_size, a.img_size), dtype=torch.uint8, device=device)
    y0 = torch.randint(0, 17, (a.batch_size,), device=device)
    out["gpu_train_img_s_no_data"] = measure(lambda: iter([(x0, y0)] * 50), trainer(a, device, normalize), a.seconds, a.warmup, sync)
    out["gpu_train_img_s"] = measure(ours["device"], trainer(a, device, normalize), a.seconds, a.warmup, sync)
    out["gpu_train_img_s_cpu_augment"] = measure(ours["cpu"], trainer(a, device, normalize), a.seconds, a.warmup, sync)
    dataset = create_dataset("", root=str(data), split="train", is_training=True)
    timm_loader = create_loader(dataset, input_size=(3, a.img_size, a.img_size), batch_size=a.batch_size,
                                is_training=True, num_workers=a.workers, pin_memory=device.type == "cuda",
                                device=device, use_prefetcher=device.type == "cuda", persistent_workers=True)
    out["gpu_train_img_s_timm"] = measure(lambda: iter(timm_loader), trainer(a, device, normalize), a.seconds, a.warmup, sync)
    out["gpu_train_speedup_vs_timm"] = out["gpu_train_img_s"] / out["gpu_train_img_s_timm"]
    out["gpu_train_speedup_vs_cpu_augment"] = out["gpu_train_img_s"] / out["gpu_train_img_s_cpu_augment"]
    prefix = "" if device.type == "cuda" else "cpu_smoke_"  # never a GPU figure without a GPU
    for k, v in out.items():
        emit(prefix + k, v)
    if a.json:
        Path(a.json).write_text(json.dumps({**out, "device": str(device)}, indent=2))
    return 0

if __name__ == "__main__":
    sys.exit(main())
