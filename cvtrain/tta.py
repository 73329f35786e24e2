"""Test-time views: the rotations and flips the documents' test set has, batched."""
from __future__ import annotations

from typing import Callable, Iterable

TTA_VIEWS = ("none", "rot90", "rot180", "rot270", "hflip", "vflip")


def apply_view(x, view: str):
    """Apply one view to a batch (N, C, H, W) tensor. (torch loads only here: config checks use TTA_VIEWS.)"""
    import torch  # lazy: see the docstring

    if view == "none":
        return x
    if view.startswith("rot"):
        return torch.rot90(x, k=int(view[3:]) // 90, dims=(2, 3))
    if view == "hflip":
        return torch.flip(x, dims=(3,))
    if view == "vflip":
        return torch.flip(x, dims=(2,))
    raise ValueError(f"unknown TTA view {view!r}; allowed: {', '.join(TTA_VIEWS)}")


def stack_views(x, views: list[str]):
    """All ``views`` of a square batch (N, C, H, W) tensor as one batch (V*N, C, H, W), view-major."""
    import torch  # lazy: the configuration checks import this module for TTA_VIEWS, before torch

    return torch.cat([apply_view(x, v) for v in views])


def predict_probs(model, images, normalize, views: list[str], batch_size: int, per_view: bool = False):
    """Mean softmax over the TTA views, (N, C) on the CPU; ``per_view``: each view's, (len(views), N, C).

    ``images``: uint8 (N, H, W, 3) numpy (the decoded-image cache; each chunk copied to the device), or a
    uint8 (N, C, H, W) tensor already on the model's device (val_shift's copies, made there). All views
    of a chunk of images go through the model in one forward pass of at most ``batch_size`` views (at
    least one image's).
    """
    import numpy as np  # lazy, as torch: the trainer's command line loads this module before SignalWatch
    import torch

    device = normalize.mean.device
    per = max(1, batch_size // max(1, len(views)))
    out = []
    with torch.no_grad():
        for s in range(0, len(images), per):
            if isinstance(images, torch.Tensor):
                x = images[s:s + per].to(device)
            else:
                x = torch.from_numpy(np.array(images[s:s + per])).permute(0, 3, 1, 2)  # a copy: the cache is read-only
                if device.type == "cuda":
                    x = x.pin_memory()
                x = x.to(device, non_blocking=True)
            p = torch.softmax(model(normalize(stack_views(x, views))).float(), dim=1).view(len(views), x.shape[0], -1)
            out.append((p if per_view else p.mean(0)).cpu())
    return torch.cat(out, dim=1 if per_view else 0) if out else torch.zeros(0)


def greedy_add(score: Callable[[list[str]], float], candidates: Iterable[str]) -> tuple[list[str], float, float]:
    """(views, their score, the score of 'none'): from ``["none"]``, add the candidate that scores best
    while it raises the score (ties: the later name). ``predict --tta auto`` and ``finalize --tta auto``."""
    candidates = list(candidates)
    chosen, best = ["none"], score(["none"])
    base = best
    while True:
        trials = [(score(chosen + [v]), v) for v in candidates if v not in chosen]
        if not trials:
            break
        f1, v = max(trials)
        if f1 <= best:
            break
        chosen.append(v)
        best = f1
    return chosen, best, base
