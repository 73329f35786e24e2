"""The document transforms ``val_shift`` and ``cvsweep shift`` call: :mod:`cvtrain.ops`, by name.

One exception: :func:`blur`. The shared op is a 5x5 Gaussian, right for the augmentation's
sigmas (0.3-1.5); a test set's blur reaches sigmas of several pixels, which a 5-tap kernel
would truncate into a box. So the same Gaussian (``ops.gaussian_kernels``) runs here with
taps enough for the largest sigma of the batch (6 sigma + 1).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .ops import brightness, contrast, downscale, gaussian_kernels, jpeg, noise, rotate_any

__all__ = ["rotate_any", "brightness", "contrast", "downscale", "blur", "noise", "jpeg"]


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of a uint8 batch, one sigma per sample, reflect padding, any sigma."""
    n, c, h, w = x.shape
    sig = torch.as_tensor(sigma, dtype=torch.float32).clamp(min=1e-3).to(x.device).view(-1)
    taps = min(2 * math.ceil(3 * float(sig.max())) + 1, 2 * ((min(h, w) - 1) // 2) + 1)
    k = gaussian_kernels(sig, max(taps, 3)).repeat_interleave(c, 0)
    pad = k.shape[1] // 2
    y = F.pad(x.float().view(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w).round_().clamp_(0, 255).to(torch.uint8)
