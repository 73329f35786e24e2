"""``cvsweep finalize --tta auto``: the test-time views chosen on the out-of-fold predictions.

Every fold trial keeps each view's softmax (cvtrain.heldout, view_predictions.npz). One list
of views is chosen for all the finalists, as ``cvtrain predict --tta auto`` chooses for one
model (:func:`cvtrain.tta.greedy_add`): from "none", add the view that raises the finalists'
mean out-of-fold macro-F1 most, while it does. The score is taken on the shifted copies of
the held-out images when the fold trials made them (val_shift), else on the clean ones. The
OOF, test and holdout arrays finalize goes on with are then those views' means.

The views are chosen on the very images they are scored on, so ``f1`` favours them a little;
``f1_nested`` chooses each fold's views on the other folds and scores the held-out fold.
Pure functions on arrays (no torch).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cvtrain.tta import greedy_add

from . import ensemble as E
from .fold_outputs import FoldOutputs

NOTE = ("chosen on the same out-of-fold images they are scored on (f1 slightly optimistic); "
        "f1_nested: each fold's views chosen on the other folds")


@dataclass
class ViewChoice:
    views: list[str]
    scored_on: str       # "shifted" (the held-out images' val_shift copies) or "clean"
    f1: float            # the finalists' mean out-of-fold macro-F1 with ``views``
    f1_none: float       # ... with no test-time view
    f1_nested: float     # ... with each fold's views chosen on the other folds

    def describe(self) -> str:
        return (f"tta auto: views {', '.join(self.views)}: mean macro-F1 of the finalists {self.f1:.4f} on the "
                f"{self.scored_on} out-of-fold images vs {self.f1_none:.4f} without test-time views "
                f"({self.f1 - self.f1_none:+.4f}); chosen on those same images, slightly optimistic "
                f"(chosen on the other folds: {self.f1_nested:.4f})")

    def to_json(self) -> dict:
        return {**asdict(self), "note": NOTE}


def mean_f1(probs: np.ndarray, names: list[str], y: np.ndarray, views: list[str]) -> float:
    """The mean over finalists of macro-F1 of ``views``' mean softmax; ``probs`` is (K, V, N, C)."""
    idx = [names.index(v) for v in views]
    c = probs.shape[3]
    return float(np.mean([E.macro_f1(y, p[idx].mean(0).argmax(1), c) for p in probs]))


def greedy(probs: np.ndarray, names: list[str], y: np.ndarray) -> tuple[list[str], float, float]:
    """(views, their mean macro-F1, that of 'none'), views added greedily from 'none' while they help."""
    return greedy_add(lambda vs: mean_f1(probs, names, y, vs), names)


def nested_f1(probs: np.ndarray, names: list[str], y: np.ndarray, fold_of: np.ndarray) -> float:
    """The finalists' mean macro-F1 when each fold is predicted with views chosen on the other folds."""
    k, _, n, c = probs.shape
    pred = np.empty((k, n), dtype=np.int64)
    for f in np.unique(fold_of):
        held = fold_of == f
        views, _, _ = greedy(probs[:, :, ~held], names, y[~held])
        idx = [names.index(v) for v in views]
        pred[:, held] = probs[:, idx][:, :, held].mean(1).argmax(-1)
    return float(np.mean([E.macro_f1(y, p, c) for p in pred]))


def choose_views(data: FoldOutputs) -> ViewChoice:
    """One list of views for every finalist, chosen on the shifted out-of-fold images when there are."""
    v = data.views
    scored_on = "shifted" if "shift" in v else "clean"
    probs = v["shift" if scored_on == "shifted" else "val"]
    views, f1, base = greedy(probs, v["names"], data.y)
    return ViewChoice(views, scored_on, f1, base, nested_f1(probs, v["names"], data.y, data.fold_of))


def apply_views(data: FoldOutputs, views: list[str]) -> None:
    """``data``'s OOF ("tta", "single", "shift"), test and holdout arrays made from ``views`` (in place)."""
    v = data.views
    idx = [v["names"].index(x) for x in views]
    data.oof["tta"] = v["val"][:, idx].mean(1)
    data.oof["single"] = v["val"][:, v["names"].index("none")]
    if "shift" in v:
        data.oof["shift"] = v["shift"][:, idx].mean(1)
    if "test" in v:
        data.test = v["test"][:, idx].mean(1)
    if "holdout" in v:
        data.holdout = v["holdout"][:, idx].mean(1)
    if "holdout_shift" in v:
        data.holdout_shift = v["holdout_shift"][:, idx].mean(1)
