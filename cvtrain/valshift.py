"""The shifted validation set: one test-like copy of each validation image (``val_shift``).

Every image's parameters come from its own generator, seeded by (image ID,
``val_shift_seed``): every trial, epoch and worker count sees the same shifted set,
whatever the split's order or the batch it falls in. The copies are made once per run,
in batches, on the training device, with the ops of :mod:`cvtrain.shift_ops`, and kept
there; each epoch then costs one extra validation pass. What each strength means is
:mod:`cvtrain.shift_profile`'s table.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from . import shift_ops as ops
from .shift_profile import BLUR_REFERENCE_SIZE, RANGES, is_off

_COLUMNS = 7  # uniforms per image; a fixed layout, so one strength never changes another's draws
BUILD_BATCH = 64


def image_seed(image_id: str, seed: int) -> int:
    """A 63-bit seed from (image ID, seed): stable across processes (no Python hash salt)."""
    digest = hashlib.sha1(f"{seed}|{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class ShiftDraw:
    """Per-image parameters (CPU tensors, row i = image i); a strength at its off value leaves a column unused."""
    rotate: torch.Tensor      # bool
    angle: torch.Tensor       # degrees in [0, 360)
    brightness: torch.Tensor  # factor
    contrast: torch.Tensor    # factor
    downscale: torch.Tensor   # factor
    blur: torch.Tensor        # sigma in pixels of this image size
    noise: torch.Tensor       # std
    noise_seed: torch.Tensor  # int64
    jpeg: torch.Tensor        # quality


def draw(profile: dict, ids: list[str], seed: int, img_size: int) -> ShiftDraw:
    """The parameters of each image's test-like copy."""
    p = {k: float(profile.get(k, r[2])) for k, r in RANGES.items()}
    u = torch.empty(len(ids), _COLUMNS, dtype=torch.float64)
    nseed = torch.empty(len(ids), dtype=torch.int64)
    for i, image_id in enumerate(ids):
        g = torch.Generator().manual_seed(image_seed(image_id, seed))
        u[i] = torch.rand(_COLUMNS, generator=g, dtype=torch.float64)
        nseed[i] = int(torch.randint(0, 2**62, (1,), generator=g))
    jitter = 0.5 + u[:, 2:6].float()  # uniform in [0.5, 1.5]

    def around_one(f: float, col: torch.Tensor) -> torch.Tensor:
        return 1 + (f - 1) * col

    return ShiftDraw(
        rotate=u[:, 0] < p["rotate_any"],
        angle=(u[:, 1] * 360).float(),
        brightness=around_one(p["brightness"], jitter[:, 0]),
        contrast=around_one(p["contrast"], jitter[:, 1]),
        downscale=torch.full((len(ids),), p["downscale"]),
        blur=p["blur"] * img_size / BLUR_REFERENCE_SIZE * jitter[:, 2],
        noise=p["noise"] * jitter[:, 3],
        noise_seed=nseed,
        jpeg=torch.full((len(ids),), p["jpeg"]),
    )


def _rows(d: ShiftDraw, rows: slice) -> ShiftDraw:
    return ShiftDraw(*(getattr(d, f)[rows] for f in ShiftDraw.__dataclass_fields__))


def apply(x: torch.Tensor, d: ShiftDraw, noise_per_image: bool = True) -> torch.Tensor:
    """The test-like copies of the uint8 batch ``x`` (N, 3, H, W) with parameters ``d`` (N rows).

    ``noise_per_image=False``: one noise draw for the batch (seeded by its first image), for callers
    whose batches never change (the profile fit), at a fraction of the cost."""
    out = x
    idx = d.rotate.nonzero().squeeze(1)
    if idx.numel():
        out = out.clone()
        dev_idx = idx.to(out.device)
        out.index_copy_(0, dev_idx, ops.rotate_any(out.index_select(0, dev_idx), d.angle[idx]))
    if (d.brightness != 1).any():
        out = ops.brightness(out, d.brightness)
    if (d.contrast != 1).any():
        out = ops.contrast(out, d.contrast)
    if (d.downscale < 1).any():
        out = ops.downscale(out, d.downscale)
    if (d.blur > 0).any():
        out = ops.blur(out, d.blur)
    if (d.noise > 0).any():
        # one call per image with the image's own seed: its noise does not depend on its batch
        if noise_per_image:
            out = torch.cat([ops.noise(out[i:i + 1], d.noise[i:i + 1], int(d.noise_seed[i]))
                             for i in range(len(out))])
        else:
            out = ops.noise(out, d.noise, int(d.noise_seed[0]))
    if (d.jpeg < 100).any():
        out = ops.jpeg(out, d.jpeg)
    return out


def shifted_copies(images: np.ndarray, rows: np.ndarray, ids: list[str], profile: dict, seed: int,
                   device: torch.device, batch: int = BUILD_BATCH) -> torch.Tensor:
    """uint8 (len(rows), 3, H, W) on ``device``: the copies of cache rows ``rows`` (NHWC), IDs ``ids``."""
    size = images.shape[1]
    d = draw(profile, ids, seed, size)
    parts = []
    for start in range(0, len(rows), batch):
        sl = slice(start, start + batch)
        x = torch.from_numpy(np.ascontiguousarray(images[rows[sl]])).permute(0, 3, 1, 2).to(device)
        parts.append(apply(x.contiguous(), _rows(d, sl)))
    if not parts:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8, device=device)
    return torch.cat(parts)


class ShiftedVal:
    """The shifted validation set as (x, y) batches on the device, for :func:`cvtrain.epoch.evaluate`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for start in range(0, len(self.x), self.batch_size):
            yield self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]


def build(cfg, images: np.ndarray, labels, val_rows: np.ndarray, ids: list[str], device: torch.device):
    """The run's :class:`ShiftedVal`, or None when ``val_shift`` is off."""
    e = cfg.experiment
    if is_off(e.val_shift):
        return None
    x = shifted_copies(images, np.asarray(val_rows), [ids[j] for j in val_rows], e.val_shift,
                       e.val_shift_seed, device)
    y = torch.as_tensor(np.asarray(labels)[np.asarray(val_rows)], dtype=torch.int64, device=device)
    return ShiftedVal(x, y, e.batch_size * 2)


def shifted_metrics(val_m: dict) -> dict:
    """evaluate()'s figures renamed for the shifted set (val_f1 -> val_shift_f1)."""
    return {k.replace("val_", "val_shift_", 1): v for k, v in val_m.items()}


def best_so_far(history: list[dict], current: float) -> float:
    """The running best val_shift_f1 over the history and this epoch (resume-safe: history is saved)."""
    seen = [h["val_shift_f1"] for h in history if "val_shift_f1" in h] + [current]
    return max(v for v in seen if v == v) if any(v == v for v in seen) else float("nan")
