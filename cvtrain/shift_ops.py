"""The document transforms ``val_shift`` and ``cvsweep shift`` call, by the op names of :mod:`cvtrain.ops`.

The one implementation of the ops is :mod:`cvtrain.ops` (shared with the training
augmentation). Where that module is not present, the same signatures are served by
the pieces :mod:`cvtrain.augment` already has (its Gaussian kernels, nearest-neighbour
affine sampling, JPEG codec) and a few lines each for the rest; callers see no
difference, and the shared module replaces these as soon as it exists.

All take a uint8 batch (N, 3, H, W) and per-sample parameter tensors of length N and
return a new uint8 batch of the same shape.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import augment as A

try:  # the shared implementation, when this checkout has it
    from . import ops as _shared
except ImportError:  # pragma: no cover - depends on the checkout
    _shared = None

PAPER = 255


def _u8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _col(v, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float32).to(x.device).view(-1, 1, 1, 1)


def rotate_any(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Counter-clockwise by ``angle`` degrees, white fill, scaled down so the whole page stays visible."""
    n, _, h, w = x.shape
    a = torch.deg2rad(torch.as_tensor(angle, dtype=torch.float32))
    c, s = a.cos().abs(), a.sin().abs()
    # the rotated w x h box fits the canvas when scaled by this
    scale = torch.minimum(w / (w * c + h * s), h / (w * s + h * c)).clamp(max=1.0)
    theta = A.affine_theta(torch.as_tensor(angle, dtype=torch.float32), torch.zeros(n, 2), scale, h, w)
    return A.sample_nearest(x, theta, fill=PAPER)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _u8(x.float() * _col(factor, x))


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    gray = (0.2989 * xf[:, 0] + 0.587 * xf[:, 1] + 0.114 * xf[:, 2]).mean(dim=(1, 2)).view(-1, 1, 1, 1)
    f = _col(factor, x)
    return _u8(f * xf + (1 - f) * gray)


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    sig = torch.as_tensor(sigma, dtype=torch.float32).clamp(min=1e-3).to(x.device)
    taps = min(2 * math.ceil(3 * float(sig.max())) + 1, 2 * ((min(h, w) - 1) // 2) - 1)
    taps = max(taps, 3)
    k = A.gaussian_kernels(sig, taps).repeat_interleave(c, 0)
    pad = taps // 2
    y = F.pad(x.float().view(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, taps), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, taps, 1), groups=n * c)
    return _u8(y.view(n, c, h, w))


def noise(x: torch.Tensor, std: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    z = torch.randn(x.shape, generator=gen, device=x.device)
    return _u8(x.float().addcmul_(z, _col(std, x)))


def jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    return A.jpeg_batch(x, [int(q) for q in torch.as_tensor(quality).tolist()])


def downscale(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    h, w = x.shape[-2:]
    f = torch.as_tensor(factor, dtype=torch.float32)
    for v in torch.unique(f).tolist():
        if v >= 1:
            continue
        idx = (f == v).nonzero().squeeze(1).to(x.device)
        small = F.interpolate(x.index_select(0, idx).float(), size=(max(1, round(h * v)), max(1, round(w * v))),
                              mode="bilinear", antialias=True, align_corners=False)
        out.index_copy_(0, idx, _u8(F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)))
    return out


if _shared is not None:  # pragma: no cover - depends on the checkout
    rotate_any = getattr(_shared, "rotate_any", rotate_any)
    brightness = getattr(_shared, "brightness", brightness)
    contrast = getattr(_shared, "contrast", contrast)
    blur = getattr(_shared, "blur", blur)
    noise = getattr(_shared, "noise", noise)
    jpeg = getattr(_shared, "jpeg", jpeg)
    downscale = getattr(_shared, "downscale", downscale)
