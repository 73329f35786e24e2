"""Bench section ``cache``: ``cache_speedup`` and the decode figures (scripts/bench.py's docstring)."""
from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

from bench_common import PY, ROOT, emit, env_for

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
