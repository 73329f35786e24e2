"""``--tta auto``: the test-time views that score best on the shifted validation set.

The checkpoint's own validation images (its split, from its saved config) get their
``val_shift`` copies (:mod:`cvtrain.valshift`); each view is scored once, then views
are added greedily from ``none`` while the mean softmax over the chosen views raises
macro-F1 on those copies. The result says which views and by how much.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import data as D
from . import valshift as V
from .config import Config
from .metrics import epoch_metrics
from .norm import Normalizer
from .shift_profile import is_off
from .tta import TTA_VIEWS, greedy_add, predict_probs


@dataclass
class TTAChoice:
    views: list[str]
    f1: float            # macro-F1 of the chosen views on the shifted validation copies
    f1_none: float       # ... with no test-time views
    scored_on: str       # "val_shift" or "clean validation (no val_shift profile)"

    def describe(self) -> str:
        return (f"tta auto: views {', '.join(self.views)}: macro-F1 {self.f1:.4f} on the {self.scored_on} vs "
                f"{self.f1_none:.4f} without test-time views ({self.f1 - self.f1_none:+.4f})")


def validation_copies(cfg: Config, device: torch.device, profile: dict | None = None):
    """(uint8 NCHW images on ``device``, labels, what they are) of the run's validation split, shifted."""
    e, d = cfg.experiment, cfg.data
    index = D.load_index(d)
    decoded = D.load_or_build_cache(index.paths, e.img_size, d.resize, d.cache_dir, progress=False)
    _, va = D.split_indices(index.labels, d, e.seed)
    profile = e.val_shift if profile is None else profile
    ids = index.image_ids()
    y = torch.as_tensor(np.asarray(index.labels)[va])
    if is_off(profile):
        x = torch.from_numpy(np.array(decoded.array[va])).permute(0, 3, 1, 2).to(device)
        return x, y, "clean validation (no val_shift profile)"
    x = V.shifted_copies(decoded.array, va, [ids[j] for j in va], profile, e.val_shift_seed, device)
    return x, y, "shifted validation"


@torch.no_grad()
def view_probs(model, x: torch.Tensor, views, batch_size: int = 64,
               data_config: dict | None = None) -> dict[str, np.ndarray]:
    """Softmax of every view on the uint8 batch ``x``, by view (``data_config``: the model's mean/std)."""
    model.eval()
    p = predict_probs(model, x, Normalizer(x.device, False, data_config), list(views), batch_size, per_view=True)
    return {v: p[i].numpy() for i, v in enumerate(views)}


def greedy_views(probs: dict[str, np.ndarray], y: np.ndarray) -> tuple[list[str], float, float]:
    """(views, their macro-F1, macro-F1 of 'none') adding the best view while it helps."""
    def score(vs):
        return epoch_metrics(y, np.mean([probs[v] for v in vs], 0).argmax(1))["f1"]

    return greedy_add(score, probs)


def choose_tta(model, cfg: Config, device: torch.device, profile: dict | None = None, batch_size: int = 64,
               data_config: dict | None = None) -> TTAChoice:
    """The views (of :data:`~cvtrain.tta.TTA_VIEWS`) to predict with, chosen on the shifted validation set."""
    x, y, what = validation_copies(cfg, device, profile)
    views, f1, base = greedy_views(view_probs(model, x, TTA_VIEWS, batch_size, data_config), y.numpy())
    return TTAChoice(views, f1, base, what)
