"""The document transforms: pure batched functions on uint8 images, the one implementation
that training augmentation (:mod:`cvtrain.augment`) and the shifted validation both call.

Every op takes a uint8 batch ``x`` of shape (N, 3, H, W) on any device and per-sample
parameter tensors of length N (on the CPU or on ``x``'s device), and returns a NEW uint8
batch of the same shape; ``x`` is left as it was. Nothing is random inside: the caller draws
the parameters (``noise`` takes a seed). A sample whose parameter is the identity (angle 0,
factor 1, strength 0, ...) comes back bit-identical, except where noted (blur, jpeg, noise
change every sample they are given).

Where torchvision has the same transform, the op follows its semantics and is tested against
it (``torchvision.transforms.v2.functional``): brightness, contrast, gamma and downscale bit-for-bit
(downscale calls torchvision's resize per group of equal sizes), blur within one level, perspective
and rotate_any within one level inside the page (the page's one-pixel border blends with the
white paper differently).

Written here rather than taken from kornia (``kornia.geometry``/``kornia.enhance``, 0.9), each
measured on one CPU thread, 32 images at 224 px: rotate_any's one ``grid_sample`` with the fit
scale and white fill folded in ran ~2x faster than kornia's ``warp_affine`` doing the same;
perspective's grid folded into per-sample multiply-adds ran ~2x faster than ``warp_perspective``;
kornia's brightness is additive, not torchvision's factor, and its gamma/contrast gave no speed;
downscale is torchvision's resize itself. So no new dependency, and the parameters stay drawn
outside the ops, as kornia's ``params=`` would have required anyway.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)

PAPER = 255                 # documents are white paper: geometric ops fill with it
BLUR_TAPS = 5
#: Corner order of :func:`perspective`'s offsets (torchvision's startpoints order).
CORNERS = ("top-left", "top-right", "bottom-right", "bottom-left")


# ---------------------------------------------------------------------------
# Photometric: torchvision's semantics, one factor per sample
# ---------------------------------------------------------------------------
def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``adjust_brightness``: each pixel times ``factor`` (1.0 unchanged), clipped, truncated."""
    f = _per_sample(factor, x)
    return x.float().mul_(f).clamp_(0, 255).to(torch.uint8)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``adjust_contrast``: blend with the mean of the image's (floored) greyscale; 1.0 unchanged."""
    _check(x)
    f = _per_sample(factor, x)
    r, g, b = x.unbind(1)
    grey = r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_()
    mean = grey.mean(dim=(1, 2)).view(-1, 1, 1, 1)
    return x.float().mul_(f).add_(mean * (1 - f)).clamp_(0, 255).to(torch.uint8)


def gamma(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``adjust_gamma`` with gain 1: ``255 * (x / 255) ** gamma``; 1.0 unchanged, > 1 darker."""
    g = _per_sample(gamma, x)
    return (x.float() / 255).pow_(g).mul_(255.999).to(torch.uint8)  # torchvision's to_dtype(scale=True)


def shadow(x: torch.Tensor, strength: torch.Tensor, angle: torch.Tensor | None = None) -> torch.Tensor:
    """A smooth illumination gradient across the page: pixels times ``1 - strength * s(t)``.

    ``t`` runs from 0 on the lit side to 1 on the dark side along the direction ``angle``
    (degrees, counter-clockwise from "darker to the right"; default 0), ``s`` is a smoothstep,
    so the brightest side is unchanged and the darkest edge loses ``strength`` (in [0, 1]) of
    its brightness. Strength 0 is the identity.
    """
    _check(x)
    n, _, h, w = x.shape
    s = _per_sample(strength, x).view(n, 1, 1)
    a = torch.deg2rad(_per_sample(angle if angle is not None else torch.zeros(n), x).view(n, 1, 1))
    cols = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w - 0.5
    rows = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h - 0.5
    cos, sin = torch.cos(a), -torch.sin(a)  # rows grow downwards: counter-clockwise is -y
    proj = cols.view(1, 1, w) * cos + rows.view(1, h, 1) * sin
    reach = (cos.abs() + sin.abs()) / 2  # the projection's extent over the page's corners
    t = (proj / reach).add_(1).div_(2).clamp_(0, 1)
    light = 1 - s * t * t * (3 - 2 * t)
    return _to_uint8(x.float().mul_(light.unsqueeze(1)))


# ---------------------------------------------------------------------------
# Geometric: one grid_sample per batch, white paper outside the page
# ---------------------------------------------------------------------------
def rotate_any(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each page by ``angle`` degrees (counter-clockwise, torchvision's sign), bilinear.

    The canvas is unchanged (H x W) and the page is scaled down to fit it whole: nothing of the
    page is cropped, the corners it uncovers are white paper (255). For a square image this is
    torchvision's ``rotate(expand=True, fill=255)`` resized back to H x W.
    """
    _check(x)
    n, _, h, w = x.shape
    a = torch.deg2rad(_per_sample(angle, x, torch.float64).view(n))
    c, s = a.cos().abs(), a.sin().abs()
    fit = torch.minimum(w / (w * c + h * s), h / (w * s + h * c))
    theta = rotation_theta(torch.rad2deg(a), fit, h, w)
    grid = F.affine_grid(theta.to(x.device, torch.float32), (n, 3, h, w), align_corners=False)
    return _sample_bilinear(x, grid)


def rotation_theta(angle: torch.Tensor, scale: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 2, 3) ``affine_grid`` matrices (output -> input) of ``p -> scale * R(angle) p`` about the centre."""
    # affine_grid maps output to input pixels: an output rotated counter-clockwise on screen samples
    # the input rotated by +angle in (x right, y down) pixel coordinates.
    a = torch.deg2rad(angle.double())
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    zero = torch.zeros_like(cos)
    row0 = torch.stack([cos, -sin * h / w, zero], 1)
    row1 = torch.stack([sin * w / h, cos, zero], 1)
    return torch.stack([row0, row1], 1)


def perspective(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Move the page's four corners inwards by ``offsets`` and warp the page with them (bilinear).

    ``offsets`` is (N, 4, 2): for each corner in :data:`CORNERS` order (top-left, top-right,
    bottom-right, bottom-left), how far it moves towards the centre as a fraction of the width
    (column 0) and height (column 1), each in [0, 0.5). All zeros is the identity. Same as
    torchvision's ``perspective(startpoints=corners, endpoints=moved corners, fill=255)``;
    :func:`perspective_offsets` draws them as ``RandomPerspective(distortion)`` does.
    """
    _check(x)
    n, _, h, w = x.shape
    off = offsets.to(torch.float64).cpu().view(n, 4, 2)
    start = torch.tensor([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=torch.float64)
    inward = torch.tensor([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=torch.float64)
    end = start + inward * off * torch.tensor([w, h], dtype=torch.float64)
    c = _homography(end, start.expand(n, 4, 2))  # output (end) -> input (start): sampling's direction
    # Per-sample coefficients folded so that the grid is a few float32 multiply-adds per pixel, on x's device.
    c = c.to(x.device, torch.float32).view(n, 9, 1, 1)
    cols = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5).view(1, 1, w)  # pixel centres
    rows = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5).view(1, h, 1)
    den = c[:, 6] * cols + c[:, 7] * rows + 1
    gx = (c[:, 0] * cols + c[:, 1] * rows + c[:, 2]).div_(den).mul_(2 / w).sub_(1)
    gy = (c[:, 3] * cols + c[:, 4] * rows + c[:, 5]).div_(den).mul_(2 / h).sub_(1)
    grid = torch.stack([gx, gy], -1)
    return _sample_bilinear(x, grid)


def perspective_offsets(distortion: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(N, 4, 2) corner offsets for :func:`perspective`, each uniform in [0, distortion / 2]:
    ``RandomPerspective(distortion_scale=distortion)``'s draw, with per-sample distortion in [0, 1)."""
    u = torch.rand((distortion.shape[0], 4, 2), generator=generator, dtype=torch.float64)
    return u * distortion.double().view(-1, 1, 1) / 2


def _homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """(N, 9) row-major 3x3 matrices (last entry 1) taking each of the 4 ``src`` points to ``dst``."""
    n = src.shape[0]
    a = torch.zeros(n, 8, 8, dtype=torch.float64)
    b = dst.reshape(n, 8)
    for i in range(4):
        sx, sy, dx, dy = src[:, i, 0], src[:, i, 1], dst[:, i, 0], dst[:, i, 1]
        a[:, 2 * i, 0], a[:, 2 * i, 1], a[:, 2 * i, 2] = sx, sy, 1
        a[:, 2 * i, 6], a[:, 2 * i, 7] = -sx * dx, -sy * dx
        a[:, 2 * i + 1, 3], a[:, 2 * i + 1, 4], a[:, 2 * i + 1, 5] = sx, sy, 1
        a[:, 2 * i + 1, 6], a[:, 2 * i + 1, 7] = -sx * dy, -sy * dy
    return torch.cat([torch.linalg.solve(a, b), torch.ones(n, 1, dtype=torch.float64)], 1)


def _sample_bilinear(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    # Sampling (x - paper) with zero padding and adding paper back fills outside with white,
    # blending the page's border into it as bilinear sampling does: one grid_sample, no mask.
    src = x.float().sub_(PAPER)
    out = F.grid_sample(src, grid.to(x.device, torch.float32), mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return _to_uint8(out.add_(PAPER))


def downscale(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Resolution loss: resize each image down by ``factor`` in (0, 1] (antialiased bilinear,
    ``round(side * factor)`` pixels, at least 1) and back up to H x W. Factor 1 is the identity.

    torchvision's ``resize`` itself, called once per group of samples sharing a size.
    """
    # Lazy: torchvision's import costs ~1 s and only this op needs it.
    from torchvision.transforms.v2 import functional as TF

    _check(x)
    n, _, h, w = x.shape
    f = factor.detach().double().cpu().view(n)
    sizes = torch.stack([(h * f).round().clamp(min=1), (w * f).round().clamp(min=1)], 1).long()
    out = x.clone(memory_format=torch.contiguous_format)
    for size in torch.unique(sizes, dim=0).tolist():
        if size == [h, w]:
            continue
        rows = ((sizes[:, 0] == size[0]) & (sizes[:, 1] == size[1])).nonzero().squeeze(1).to(x.device)
        small = TF.resize(x.index_select(0, rows), size, antialias=True)
        out.index_copy_(0, rows, TF.resize(small, [h, w], antialias=True))
    return out


# ---------------------------------------------------------------------------
# Damage: blur, noise, JPEG
# ---------------------------------------------------------------------------
def blur(x: torch.Tensor, sigma: torch.Tensor, taps: int = BLUR_TAPS) -> torch.Tensor:
    """Gaussian blur, ``taps`` x ``taps`` (odd; 5 by default), one sigma per sample (torchvision's
    ``gaussian_blur``, reflect padding)."""
    _check(x)
    sub = x.float()
    return _to_uint8(_blur(sub, _per_sample(sigma, sub).view(-1), taps))


def noise(x: torch.Tensor, std: torch.Tensor, seed: int) -> torch.Tensor:
    """Gaussian pixel noise of standard deviation ``std`` (pixel levels), rounded and clipped; the
    noise comes from a generator on ``x``'s device seeded with ``seed``."""
    _check(x)
    sub = x.float()
    gen = torch.Generator(device=sub.device).manual_seed(int(seed))
    z = torch.randn(sub.shape, generator=gen, device=sub.device, dtype=sub.dtype)
    return _to_uint8(sub.addcmul_(z, _per_sample(std, sub)))


def gaussian_kernels(sigma: torch.Tensor, taps: int = BLUR_TAPS) -> torch.Tensor:
    """(N, taps) normalised 1-D Gaussian kernels, one per sigma (torchvision's gaussian_blur's)."""
    t = torch.arange(taps, device=sigma.device, dtype=sigma.dtype) - (taps - 1) / 2
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1)) ** 2)
    return k / k.sum(1, keepdim=True)


def _blur(x: torch.Tensor, sigma: torch.Tensor, taps: int = BLUR_TAPS) -> torch.Tensor:
    n, c, h, w = x.shape
    k = gaussian_kernels(sigma, taps).repeat_interleave(c, 0)  # one kernel per (sample, channel) group
    pad = taps // 2
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    # The Gaussian is separable: two grouped 1-D passes, 2 * taps per pixel instead of taps ** 2.
    with _native_cpu_conv(x.device):
        y = F.conv2d(y, k.view(n * c, 1, 1, taps), groups=n * c)
        y = F.conv2d(y, k.view(n * c, 1, taps, 1), groups=n * c)
    return y.view(n, c, h, w)


def _native_cpu_conv(device: torch.device):
    # oneDNN runs this many-group, one-channel-per-group convolution ~2.5x slower than PyTorch's
    # own kernel on a CPU. The switch is process-wide for the two calls; nothing else convolves
    # meanwhile (the loader runs in the training thread).
    if device.type != "cpu":
        return contextlib.nullcontext()
    return torch.backends.mkldnn.flags(enabled=False, deterministic=None, allow_tf32=None, fp32_precision=None)


_cuda_codec_failed = False


def jpeg(x: torch.Tensor, quality) -> torch.Tensor:
    """Re-compress each image as JPEG at its quality (1-95); torchvision's codec on CUDA (nvjpeg),
    PIL on the CPU. ``quality``: a tensor or list of N ints."""
    _check(x)
    q = quality.tolist() if isinstance(quality, torch.Tensor) else list(quality)
    return jpeg_batch(x, [int(v) for v in q])


def jpeg_batch(x: torch.Tensor, qualities: list[int]) -> torch.Tensor:
    """Re-compress each uint8 CHW image of ``x`` as JPEG at its quality; same device as ``x``."""
    global _cuda_codec_failed
    if x.device.type == "cuda" and not _cuda_codec_failed:
        try:
            return _jpeg_cuda(x, qualities)
        except RuntimeError as exc:  # a torchvision build without nvjpeg: the PIL path still works
            _cuda_codec_failed = True
            log.warning("JPEG damage on the GPU failed (%s); falling back to PIL on the CPU", exc)
    src = x.cpu()
    out = torch.empty_like(src, memory_format=torch.contiguous_format)
    for i, q in enumerate(qualities):
        buf = io.BytesIO()
        Image.fromarray(src[i].permute(1, 2, 0).contiguous().numpy()).save(buf, "JPEG", quality=int(q))
        buf.seek(0)
        with Image.open(buf) as im:
            out[i].copy_(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))
    return out.to(x.device, non_blocking=True)


def _jpeg_cuda(x: torch.Tensor, qualities: list[int]) -> torch.Tensor:
    # Lazy: the GPU codec, imported only where it runs.
    from torchvision.io import decode_jpeg, encode_jpeg

    encoded: list = [None] * len(qualities)
    with warnings.catch_warnings():
        # torchvision's codec is deprecated (0.29) in favour of torchcodec, yet it is the one that runs on the GPU.
        warnings.simplefilter("ignore", DeprecationWarning)
        for q in sorted(set(qualities)):  # encode_jpeg takes one quality per call
            rows = [i for i, qi in enumerate(qualities) if qi == q]
            for i, e in zip(rows, encode_jpeg([x[i].contiguous() for i in rows], quality=int(q))):
                encoded[i] = e.cpu()
        decoded = decode_jpeg(encoded, device=x.device)
    return torch.stack(decoded)


# ---------------------------------------------------------------------------
def _check(x: torch.Tensor) -> None:
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"the document ops need a uint8 batch (N, 3, H, W); got {x.dtype} {tuple(x.shape)}")


def _per_sample(values: torch.Tensor, like: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """``values`` (length N) on ``like``'s device, shaped to broadcast over (N, C, H, W)."""
    v = torch.as_tensor(values)
    if v.numel() != like.shape[0]:
        raise ValueError(f"{v.numel()} parameters for a batch of {like.shape[0]} samples")
    return v.to(like.device, dtype, non_blocking=True).view(-1, 1, 1, 1)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)
