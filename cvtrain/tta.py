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


def view_softmax(model, x, normalize, views: list[str], per_view: bool = False):
    """Softmax of ``views`` of the uint8 batch ``x`` (N, C, H, W, on the model's device) in one forward
    pass: each view's, (V, N, classes), or ``per_view`` False their mean, (N, classes)."""
    import torch  # lazy: see stack_views

    p = torch.softmax(model(normalize(stack_views(x, views))).float(), dim=1).view(len(views), x.shape[0], -1)
    return p if per_view else p.mean(0)


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
