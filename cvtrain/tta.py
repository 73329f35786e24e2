"""Test-time views: the rotations and flips the documents' test set has, batched."""
from __future__ import annotations

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
