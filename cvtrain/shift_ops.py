"""The document transforms ``val_shift`` and ``cvsweep shift`` call: :mod:`cvtrain.ops`, by name.

One exception: :func:`blur`. The shared op is a 5x5 Gaussian, right for the augmentation's
sigmas (0.3-1.5); a test set's blur reaches sigmas of several pixels, which a 5-tap kernel
would truncate into a box. So the same op (``ops.blur``) runs here with
taps enough for the largest sigma of the batch (6 sigma + 1).
"""
from __future__ import annotations

import math

import torch

from . import ops
from .ops import brightness, contrast, downscale, jpeg, noise, rotate_any

__all__ = ["rotate_any", "brightness", "contrast", "downscale", "blur", "noise", "jpeg"]


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of a uint8 batch, one sigma per sample, reflect padding, any sigma: the shared
    op with taps enough for the batch's largest sigma (6 sigma + 1, at most the image's side)."""
    h, w = x.shape[-2:]
    sig = torch.as_tensor(sigma, dtype=torch.float32).clamp(min=1e-3).to(x.device).view(-1)
    taps = min(2 * math.ceil(3 * float(sig.max())) + 1, 2 * ((min(h, w) - 1) // 2) + 1)
    return ops.blur(x, sig, max(taps, 3))
