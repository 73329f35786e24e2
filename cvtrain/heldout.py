"""Predictions of a run's final model on the images it did not train on, for finalize.

Held-out images are predicted with the same test-time views as the test set, so the
out-of-fold figure scores the predictor that is submitted; the plain view ("none") is
written beside it, and with ``val_shift`` on, the shifted copies of the held-out images
(the same copies the epochs validated on) with the same views. Every view of
:data:`~cvtrain.tta.TTA_VIEWS` is predicted once and the files average the run's own; each
view's softmax is also kept (view_predictions.npz), so that finalize can choose the views
on the out-of-fold predictions (``cvsweep finalize --tta auto``). The model is the one in
memory at the end: the final epoch's, also when the run was resumed after its last epoch
(no epoch ran in this process).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .data import DatasetIndex
from .tta import TTA_VIEWS, predict_probs

#: The files finalize reads (agent.fold_outputs names them too).
VAL_TTA, VAL_SINGLE, HOLDOUT = "val_predictions.csv", "val_predictions_single.csv", "holdout_predictions.csv"
VAL_SHIFT, VIEWS_FILE = "val_shift_predictions.csv", "view_predictions.npz"
HOLDOUT_SHIFT = "holdout_shift_predictions.csv"


def all_views(model, images, normalize, batch_size: int) -> np.ndarray:
    """Softmax of every view of :data:`TTA_VIEWS` on the uint8 ``images`` (as predict_probs takes them):
    (V, N, C) float32."""
    return predict_probs(model, images, normalize, list(TTA_VIEWS), batch_size, per_view=True).numpy()


def mean_of(per_view: np.ndarray, views: list[str]) -> np.ndarray:
    """The mean softmax over ``views`` of :func:`all_views`' output: what predict_probs gives with them."""
    return per_view[[TTA_VIEWS.index(v) for v in views]].mean(0)


def write_heldout_predictions(model, images: np.ndarray, index: DatasetIndex, val: np.ndarray, holdout: np.ndarray,
                              views: list[str], normalize, batch_size: int, out_dir: Path,
                              shifted=None, holdout_shifted=None) -> dict[str, np.ndarray]:
    """val_predictions.csv (``views`` averaged), val_predictions_single.csv (no view), with ``shifted``
    (the val rows' shifted copies in ``val`` order, as :func:`~cvtrain.tta.predict_probs` takes
    images) val_shift_predictions.csv (``views``)
    and, when the run has a holdout, holdout_predictions.csv (``views``; with ``holdout_shifted``, its
    shifted copies in holdout_shift_predictions.csv). Rows: ID, target, p0..pC-1.

    Returns every view's softmax for :func:`write_view_predictions`: val, val_shift, holdout (V, N, C),
    with val_ids, val_y, holdout_ids, holdout_y.
    """
    model.eval()
    ids, labels = index.image_ids(), np.asarray(index.labels)
    val, holdout = np.asarray(val, dtype=np.int64), np.asarray(holdout, dtype=np.int64)
    out: dict[str, np.ndarray] = {}

    def predict(key: str, x, rows: np.ndarray, *files: tuple[str, list[str]]) -> None:
        """Every view's softmax of ``x`` into out[key]; each file: the mean over its views."""
        out[key] = all_views(model, x, normalize, batch_size)
        keys = [(ids[j], labels[j]) for j in rows]
        for name, vs in files:
            write_probs(out_dir / name, ["ID", "target"], keys, mean_of(out[key], vs))

    out.update(val_ids=np.array([ids[j] for j in val]), val_y=labels[val])
    predict("val", images[val], val, (VAL_TTA, views), (VAL_SINGLE, ["none"]))
    if shifted is not None:
        predict("val_shift", shifted, val, (VAL_SHIFT, views))
    if len(holdout):
        out.update(holdout_ids=np.array([ids[j] for j in holdout]), holdout_y=labels[holdout])
        predict("holdout", images[holdout], holdout, (HOLDOUT, views))
        if holdout_shifted is not None:
            predict("holdout_shift", holdout_shifted, holdout, (HOLDOUT_SHIFT, views))
    return out


def write_view_predictions(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Every view's softmax (agent.fold_outputs.read_views reads it), with ``views`` naming the rows;
    written whole or not at all."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        np.savez(f, views=np.array(TTA_VIEWS), **arrays)
    tmp.replace(path)
    return path


def write_probs(path: Path, head: list[str], rows: list[tuple], probs: np.ndarray) -> Path:
    """One row per image, probabilities to 6 significant digits; written whole or not at all."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(head + [f"p{c}" for c in range(probs.shape[1])])
        w.writerows([*r, *(f"{v:.6g}" for v in p)] for r, p in zip(rows, probs))
    tmp.replace(path)
    return path
