"""The per-sample augmentation path (``augment_on=cpu``): the documents' augmentations on one uint8
CHW tensor in a loader worker, one seeded generator per sample. The batched path on the device is
:mod:`cvtrain.augment`; both draw the same document transforms.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from . import augment as A
from .config import AugmentConfig
from .transforms import PAD_FILL


def augment(img: torch.Tensor, aug: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Rotations, flips, small affine, the document transforms, blur, noise and JPEG damage."""
    def coin(p: float) -> bool:
        return p > 0 and torch.rand((), generator=g).item() < p

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=g).item()

    if coin(aug.rotate):
        img = torch.rot90(img, k=int(torch.randint(1, 4, (), generator=g)), dims=(1, 2))
    if coin(aug.flip):
        img = torch.flip(img, dims=(2,) if coin(0.5) else (1,))
    if coin(aug.affine):
        h = img.shape[-1]
        img = TF.affine(img, angle=uniform(-10, 10), translate=[int(uniform(-0.05, 0.05) * h), int(uniform(-0.05, 0.05) * h)],
                        scale=uniform(0.9, 1.1), shear=[0.0, 0.0], fill=[PAD_FILL] * 3)
    if any(getattr(aug, op) > 0 for op in A.DOC_OPS):
        # The document transforms: the batched path's ops and draws, on a batch of one.
        one = img.unsqueeze(0).clone(memory_format=torch.contiguous_format)
        A.apply_document(one, A.draw_document(1, aug, g))
        img = one[0]
    if coin(aug.blur):
        s = uniform(0.3, 1.5)
        img = TF.gaussian_blur(img, kernel_size=[5, 5], sigma=[s, s])
    if coin(aug.noise):
        noise = torch.randn(img.shape, generator=g) * uniform(3, 15)
        img = (img.float() + noise).clamp_(0, 255).to(torch.uint8)
    if coin(aug.jpeg):
        img = jpeg_damage(img, int(uniform(20, 60)))
    return img


def jpeg_damage(img: torch.Tensor, quality: int) -> torch.Tensor:
    """Re-compress a uint8 CHW tensor as JPEG at ``quality`` (PIL; torchvision's codec is deprecated)."""
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
