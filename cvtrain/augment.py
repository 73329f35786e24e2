"""The documents' augmentations for a whole batch at once, on the device that trains.

``augment_batch(x, aug, generator)`` takes a uint8 batch (N, 3, H, W) and returns
a new one. Every per-sample choice (which operations, angles, sigmas, qualities)
is drawn up front by :func:`draw` from one CPU generator, seeded by
:func:`batch_generator` from (seed, epoch, batch index): a resumed run draws what
an uninterrupted one drew, and the choices are the same on any device and for any
worker count (only the noise pixels come from the device's own generator). Then each
operation runs once for the samples its coin chose, and every other sample stays
bit-identical:

- rotation by 90/180/270 degrees and flips: index masks, one copy per kind;
- a small affine (max 10 degrees, 5% shift, 10% scale, white fill): one
  nearest-neighbour ``grid_sample`` over per-sample ``affine_grid`` matrices,
  done as a gather of the uint8 pixels (nearest, as torchvision's affine in the
  per-sample path samples);
- Gaussian blur (sigma 0.3-1.5, 5x5): a grouped convolution, one kernel per sample;
- Gaussian pixel noise (std 3-15): one draw for the chosen samples, from a generator
  on the device seeded by the batch's draw;
- JPEG damage (quality 20-59): only the chosen samples; torchvision's codec on CUDA
  (nvjpeg), PIL on the CPU;
- the document transforms, off unless their probability is set (cvtrain/transforms.py has
  their strengths): rotation by any angle, perspective, brightness, contrast, gamma, shadow
  and resolution loss, applied after the affine and before blur, by the ops of
  :mod:`cvtrain.ops` (the one implementation; the shifted validation calls them too).
  Their choices come from a second block of draws after the first, so turning them on
  leaves every other operation's choices for a seed as they were.

Strengths and meaning are those of the per-sample path (:func:`cvtrain.sample_augment.augment`,
``augment_on=cpu``), in the same order. Two details differ: the shift is a
fraction of a pixel finer (the per-sample path truncates it to whole pixels), and
noise is rounded rather than truncated to uint8.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import ops
from .config import AugmentConfig
from .ops import PAPER
from .transforms import TRANSFORMS

log = logging.getLogger(__name__)

BASE_OPS = ("rotate", "flip", "affine", "blur", "noise", "jpeg")
#: The document transforms (cvtrain/transforms.py), drawn in a second block of columns after the
#: first: turning them on never moves the draws of the operations above for a given seed.
DOC_OPS = tuple(t.name for t in TRANSFORMS)
OPS = BASE_OPS + DOC_OPS
MAX_ANGLE = 10.0            # degrees
MAX_SHIFT = 0.05            # fraction of the side
MAX_SCALE = 0.10            # scale in [0.9, 1.1]
SIGMA = (0.3, 1.5)
NOISE_STD = (3.0, 15.0)
JPEG_QUALITY = (20, 60)     # int(uniform(20, 60)): 20..59, as the per-sample path draws it
_COLUMNS = 15               # uniforms per sample; a fixed layout, so one strength never shifts another's draws
_DOC_COLUMNS = 22           # the second block: 7 coins, angle, 3 factors, 8 corner offsets, downscale, shadow (2)


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The CPU generator of batch ``batch`` of ``epoch``: a pure function of the three numbers."""
    h = 0
    for v in (seed, epoch, batch):
        h = _splitmix64(h ^ (v % 2**64))
    return torch.Generator().manual_seed(h >> 1)


def _splitmix64(z: int) -> int:
    # A cheap, well-mixed integer hash: nearby (seed, epoch, batch) give unrelated seeds.
    z = (z + 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


@dataclass(frozen=True)
class DocumentDraw:
    """Per-sample choices of the document transforms (CPU tensors; row i is sample i)."""
    chosen: dict                  # op name (DOC_OPS) -> bool (N,)
    angle: torch.Tensor           # rotate_any: degrees in [-rotate_any_max, rotate_any_max]
    brightness: torch.Tensor      # factor in [1 - brightness_max, 1 + brightness_max]
    contrast: torch.Tensor        # factor in [1 - contrast_max, 1 + contrast_max]
    gamma: torch.Tensor           # log-uniform in [1 / (1 + gamma_max), 1 + gamma_max]
    offsets: torch.Tensor         # (N, 4, 2) perspective corner offsets (ops.perspective), each in [0, max/2]
    downscale: torch.Tensor       # factor in [downscale_min, 1]
    shadow: torch.Tensor          # strength in [0, shadow_max]
    shadow_angle: torch.Tensor    # degrees in [0, 360)


def draw_document(n: int, aug: AugmentConfig, generator: torch.Generator) -> DocumentDraw:
    """The document transforms' choices: one (n, 22) block of uniforms in a fixed layout."""
    u = torch.rand((n, _DOC_COLUMNS), generator=generator, dtype=torch.float64)
    p = torch.tensor([getattr(aug, op) for op in DOC_OPS], dtype=torch.float64)
    coin = u[:, :len(DOC_OPS)] < p

    def between(col, lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * u[:, col]).float()

    log_g = torch.log1p(torch.tensor(aug.gamma_max, dtype=torch.float64))
    return DocumentDraw(
        chosen={op: coin[:, i] for i, op in enumerate(DOC_OPS)},
        angle=between(7, -aug.rotate_any_max, aug.rotate_any_max),
        brightness=between(8, 1 - aug.brightness_max, 1 + aug.brightness_max),
        contrast=between(9, 1 - aug.contrast_max, 1 + aug.contrast_max),
        gamma=torch.exp(log_g * (2 * u[:, 10] - 1)).float(),
        offsets=(u[:, 11:19] * aug.perspective_max / 2).view(n, 4, 2).float(),
        downscale=between(19, aug.downscale_min, 1.0),
        shadow=between(20, 0.0, aug.shadow_max),
        shadow_angle=between(21, 0.0, 360.0),
    )


#: The document transforms in the order they are applied (geometry, light, then resolution),
#: each as a call of its op on the chosen samples.
_DOC_APPLY = (
    ("rotate_any", lambda x, d, i: ops.rotate_any(x, d.angle[i])),
    ("perspective", lambda x, d, i: ops.perspective(x, d.offsets[i])),
    ("brightness", lambda x, d, i: ops.brightness(x, d.brightness[i])),
    ("contrast", lambda x, d, i: ops.contrast(x, d.contrast[i])),
    ("gamma", lambda x, d, i: ops.gamma(x, d.gamma[i])),
    ("shadow", lambda x, d, i: ops.shadow(x, d.shadow[i], d.shadow_angle[i])),
    ("downscale", lambda x, d, i: ops.downscale(x, d.downscale[i])),
)
assert sorted(op for op, _ in _DOC_APPLY) == sorted(DOC_OPS)


def apply_document(out: torch.Tensor, d: DocumentDraw) -> None:
    """Apply the document transforms ``d`` chose to ``out`` (uint8 NCHW) in place."""
    for op, call in _DOC_APPLY:
        idx = _rows(d.chosen[op])
        if idx is not None:
            _put(out, idx, call(_take(out, idx), d, idx))


@dataclass(frozen=True)
class Draw:
    """Per-sample choices for one batch (CPU tensors; row i is sample i)."""
    quarter_turns: torch.Tensor   # int64 in {0, 1, 2, 3}; 0: not rotated
    flip: torch.Tensor            # int64: 0 none, 1 left-right, 2 top-bottom
    affine: torch.Tensor          # bool
    angle: torch.Tensor           # degrees in [-10, 10]
    shift: torch.Tensor           # (N, 2): x and y shift as a fraction of width and height, in [-0.05, 0.05]
    scale: torch.Tensor           # in [0.9, 1.1]
    blur: torch.Tensor            # bool
    sigma: torch.Tensor           # in [0.3, 1.5]
    noise: torch.Tensor           # bool
    noise_std: torch.Tensor       # in [3, 15]
    jpeg: torch.Tensor            # bool
    quality: torch.Tensor         # int64 in [20, 59]
    noise_seed: int
    doc: DocumentDraw

    def applied(self, op: str) -> torch.Tensor:
        """Which samples ``op`` (one of :data:`OPS`) changes."""
        if op == "rotate":
            return self.quarter_turns > 0
        if op == "flip":
            return self.flip > 0
        if op in BASE_OPS:
            return getattr(self, op)
        if op in DOC_OPS:
            return self.doc.chosen[op]
        raise ValueError(f"unknown augmentation {op!r}; allowed: {', '.join(OPS)}")


def draw(n: int, aug: AugmentConfig, generator: torch.Generator) -> Draw:
    """Draw every choice for ``n`` samples from ``generator`` with the strengths in ``aug``."""
    u = torch.rand((n, _COLUMNS), generator=generator, dtype=torch.float64)
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    p = torch.tensor([getattr(aug, op) for op in BASE_OPS], dtype=torch.float64)
    coin = u[:, :6] < p  # probability 0: never (u >= 0); probability 1: always (u < 1)
    zero = torch.zeros(n, dtype=torch.long)
    turns = (1 + (u[:, 6] * 3).long()).clamp_(max=3)
    axis = torch.where(u[:, 7] < 0.5, 1, 2)

    def between(col: int, lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * u[:, col]).float()

    return Draw(
        quarter_turns=torch.where(coin[:, 0], turns, zero),
        flip=torch.where(coin[:, 1], axis, zero),
        affine=coin[:, 2],
        angle=between(8, -MAX_ANGLE, MAX_ANGLE),
        shift=torch.stack([between(9, -MAX_SHIFT, MAX_SHIFT), between(10, -MAX_SHIFT, MAX_SHIFT)], 1),
        scale=between(11, 1 - MAX_SCALE, 1 + MAX_SCALE),
        blur=coin[:, 3],
        sigma=between(12, *SIGMA),
        noise=coin[:, 4],
        noise_std=between(13, *NOISE_STD),
        jpeg=coin[:, 5],
        quality=(JPEG_QUALITY[0] + (JPEG_QUALITY[1] - JPEG_QUALITY[0]) * u[:, 14]).long(),
        noise_seed=noise_seed,
        doc=draw_document(n, aug, generator),  # drawn after the block above: its draws stay as they were
    )


def augment_batch(x: torch.Tensor, aug: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment a uint8 (N, 3, H, W) batch on its device; ``x`` itself is left as it was."""
    return apply(x, draw(x.shape[0], aug, generator))


def apply(x: torch.Tensor, d: Draw) -> torch.Tensor:
    """Apply the choices ``d`` to the uint8 batch ``x``; returns a new contiguous NCHW batch.

    NCHW rather than the cache's (N, H, W, 3): rotating planes of bytes is ~4x cheaper than
    rotating 3-byte pixels, and the grouped convolution wants planes.
    """
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"augment_batch needs a uint8 batch (N, 3, H, W); got {x.dtype} {tuple(x.shape)}")
    if x.shape[0] != d.affine.shape[0]:
        raise ValueError(f"the batch has {x.shape[0]} samples, the draw {d.affine.shape[0]}")
    out = x.clone(memory_format=torch.contiguous_format)
    h, w = out.shape[-2:]
    for k in (1, 2, 3):
        idx = _rows(d.quarter_turns == k)
        if idx is not None:
            if k % 2 and h != w:
                raise ValueError(f"a 90-degree rotation of {h}x{w} images changes their shape; the cache is square")
            _put(out, idx, torch.rot90(_take(out, idx), k, dims=(2, 3)))
    for kind, dims in ((1, (3,)), (2, (2,))):
        idx = _rows(d.flip == kind)
        if idx is not None:
            _put(out, idx, torch.flip(_take(out, idx), dims=dims))
    idx = _rows(d.affine)
    if idx is not None:
        theta = affine_theta(d.angle[idx], d.shift[idx], d.scale[idx], h, w).to(out.device, non_blocking=True)
        _put(out, idx, sample_nearest(_take(out, idx), theta, fill=PAPER))
    apply_document(out, d.doc)
    idx = _rows(d.blur)
    if idx is not None:
        _put(out, idx, ops.blur(_take(out, idx), d.sigma[idx]))
    idx = _rows(d.noise)
    if idx is not None:
        _put(out, idx, ops.noise(_take(out, idx), d.noise_std[idx], d.noise_seed))
    idx = _rows(d.jpeg)
    if idx is not None:
        _put(out, idx, ops.jpeg(_take(out, idx), d.quality[idx]))
    return out


# ---------------------------------------------------------------------------
def _rows(mask: torch.Tensor) -> torch.Tensor | None:
    """CPU indices of the chosen samples; None when there are none (the common case for rare ops)."""
    idx = mask.nonzero().squeeze(1)
    return idx if idx.numel() else None


def _take(out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return out.index_select(0, idx.to(out.device, non_blocking=True))


def _put(out: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> None:
    if out.device.type == "cpu":  # on a CPU, index_copy_ of whole images is ~15x slower than a copy per image
        for k, i in enumerate(idx.tolist()):
            out[i].copy_(values[k])
    else:
        out.index_copy_(0, idx.to(out.device, non_blocking=True), values)


def affine_theta(angle: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 2, 3) matrices in ``affine_grid``'s normalised coordinates: output pixel -> input pixel.

    The forward map, in pixels about the image centre, is ``p -> scale * R(angle) p + shift * (w, h)``
    with a positive angle turning the image counter-clockwise: torchvision's
    ``affine(img, angle, translate=shift * (w, h), scale)``.
    """
    a = -torch.deg2rad(angle.float())  # y points down: counter-clockwise on screen is negative in pixels
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    # R(a) / scale, conjugated by the pixel -> normalised scaling diag(w/2, h/2).
    m00, m01, m10, m11 = cos, -sin * h / w, sin * w / h, cos
    tx, ty = 2 * shift[:, 0], 2 * shift[:, 1]
    row0 = torch.stack([m00, m01, -(m00 * tx + m01 * ty)], 1)
    row1 = torch.stack([m10, m11, -(m10 * tx + m11 * ty)], 1)
    return torch.stack([row0, row1], 1)


def sample_nearest(x: torch.Tensor, theta: torch.Tensor, fill: int) -> torch.Tensor:
    """``grid_sample(x, affine_grid(theta), mode="nearest")`` on uint8 pixels, ``fill`` outside.

    Nearest-neighbour sampling is a gather: done on the uint8 pixels directly, it needs no float
    copy of the images and costs ~5x less than ``grid_sample`` on a CPU (the same pixels, but for
    coordinates within float rounding of a pixel boundary).
    """
    n, c, h, w = x.shape
    t = theta.to(x.device, torch.float32)
    # affine_grid's normalised coordinates folded into per-sample coefficients, so that a source
    # index is one multiply-add per pixel: i = a * col + b * row + e (+1: the 1-pixel border below).
    ax, bx, ex = _pixel_coefficients(t[:, 0], w, h, w)
    ay, by, ey = _pixel_coefficients(t[:, 1], w, h, h)
    cols = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, w)
    rows = torch.arange(h, device=x.device, dtype=torch.float32).view(1, h)
    ix = torch.addcmul((bx.view(n, 1) * rows + ex.view(n, 1)).view(n, h, 1), ax.view(n, 1, 1), cols)
    iy = torch.addcmul((by.view(n, 1) * rows + ey.view(n, 1)).view(n, h, 1), ay.view(n, 1, 1), cols)
    # Everything outside the image lands on a border of ``fill`` pixels: no mask to compute.
    ix = ix.round_().clamp_(0, w + 1)
    iy = iy.round_().clamp_(0, h + 1)
    flat = ix.add_(iy, alpha=w + 2).long().view(n, 1, -1)
    src = F.pad(x, (1, 1, 1, 1), value=fill)
    return torch.gather(src.view(n, c, -1), 2, flat.expand(n, c, -1)).view(n, c, h, w)


def _pixel_coefficients(row: torch.Tensor, w: int, h: int, size: int):
    """(a, b, e) with index = a*col + b*row + e for one row of theta (``size``: that axis's length),
    in an image padded by one pixel."""
    # normalised x = (2*col + 1)/w - 1, y = (2*row + 1)/h - 1; index = (v + 1) * size/2 - 0.5 (align_corners=False)
    a = row[:, 0] * size / w
    b = row[:, 1] * size / h
    e = (row[:, 0] * (1 / w - 1) + row[:, 1] * (1 / h - 1) + row[:, 2] + 1) * size / 2 - 0.5 + 1
    return a, b, e
