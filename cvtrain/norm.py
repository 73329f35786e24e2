"""The backbone's own input normalisation: timm's resolved data config of the model built.

Many pretrained weights expect other inputs than ImageNet's mean/std (``tf_efficientnet_*``,
SigLIP and many ViTs: mean = std = 0.5). Training normalises with the values of the model it
built, every checkpoint stores them as plain numbers and strings (a ``data_config`` entry, so
weights-only loading reads them), and inference uses the stored ones. A checkpoint from before
(no ``data_config``) falls back to ImageNet's, said once per process.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: What a checkpoint without a stored data config was trained with.
IMAGENET = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bilinear", "crop_pct": 1.0,
            "source": "ImageNet's defaults"}
_warned_fallback = False


def model_data_config(model) -> dict:
    """mean, std, interpolation and crop_pct of ``model`` (timm's ``resolve_model_data_config``),
    as plain floats and strings.

    Only mean and std act here: training and inference resize the whole page to ``img_size``
    with white padding (no centre crop); interpolation and crop_pct are kept for the record.
    """
    # Lazy: timm is loaded already wherever a model exists; this module is imported before it.
    from timm.data import resolve_model_data_config

    dc = resolve_model_data_config(model)
    return {"mean": [float(v) for v in dc["mean"]], "std": [float(v) for v in dc["std"]],
            "interpolation": str(dc.get("interpolation", "bilinear")), "crop_pct": float(dc.get("crop_pct", 1.0)),
            "source": f"the model's pretrained config ({_tag(model)})"}


def _tag(model) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch, tag = cfg.get("architecture"), cfg.get("tag")
    return f"{arch}.{tag}" if arch and tag else str(arch or type(model).__name__)


def stored_data_config(obj: dict, where: str) -> dict:
    """The data config a checkpoint ``obj`` (read from ``where``) stores; ImageNet's when it has none."""
    global _warned_fallback
    dc = obj.get("data_config")
    if isinstance(dc, dict) and "mean" in dc and "std" in dc:
        return {**dc, "source": f"stored in {where}"}
    if not _warned_fallback:
        _warned_fallback = True
        log.warning("%s stores no normalisation (a checkpoint from before they were stored): using ImageNet's "
                    "mean/std, as training did then", where)
    return dict(IMAGENET)


def describe(dc: dict) -> str:
    """One line: ``mean=(0.5, 0.5, 0.5) std=(0.5, 0.5, 0.5) (stored in best.pt)``."""
    def fmt(v):
        return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"

    return f"mean={fmt(dc['mean'])} std={fmt(dc['std'])} ({dc.get('source', 'given')})"


class Normalizer(nn.Module):
    """uint8 NCHW batch -> normalised float on the device (cheaper than per-sample on the CPU), with
    the mean/std of ``data_config`` (:mod:`cvtrain.norm`; default ImageNet's)."""

    def __init__(self, device, channels_last: bool, data_config: dict | None = None):
        super().__init__()
        self.data_config = dict(data_config or IMAGENET)
        self.mean = torch.tensor(self.data_config["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(self.data_config["std"], device=device).view(1, 3, 1, 1) * 255
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.mean.device, non_blocking=True).float()
        x = (x - self.mean) / self.std
        # Batches arrive NCHW or as NCHW views of the cache's NHWC rows: give the model one layout.
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

