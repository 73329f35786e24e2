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
from .predict import predict_probs
from .tta import TTA_VIEWS

#: The files finalize reads (agent.fold_outputs names them too).
VAL_TTA, VAL_SINGLE, HOLDOUT = "val_predictions.csv", "val_predictions_single.csv", "holdout_predictions.csv"
VAL_SHIFT, VIEWS_FILE = "val_shift_predictions.csv", "view_predictions.npz"
HOLDOUT_SHIFT = "holdout_shift_predictions.csv"


def all_views(model, images: np.ndarray, normalize, batch_size: int) -> np.ndarray:
    """Softmax of every view of :data:`TTA_VIEWS` on the uint8 NHWC ``images``: (V, N, C) float32."""
    return predict_probs(model, images, normalize, list(TTA_VIEWS), batch_size, per_view=True).numpy()


def mean_of(per_view: np.ndarray, views: list[str]) -> np.ndarray:
    """The mean softmax over ``views`` of :func:`all_views`' output: what predict_probs gives with them."""
    return per_view[[TTA_VIEWS.index(v) for v in views]].mean(0)


def write_heldout_predictions(model, images: np.ndarray, index: DatasetIndex, val: np.ndarray, holdout: np.ndarray,
                              views: list[str], normalize, batch_size: int, out_dir: Path,
                              shifted: np.ndarray | None = None,
                              holdout_shifted: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """val_predictions.csv (``views`` averaged), val_predictions_single.csv (no view), with ``shifted``
    (the val rows' shifted copies, NHWC uint8, in ``val`` order) val_shift_predictions.csv (``views``)
    and, when the run has a holdout, holdout_predictions.csv (``views``; with ``holdout_shifted``, its
    shifted copies in holdout_shift_predictions.csv). Rows: ID, target, p0..pC-1.

    Returns every view's softmax for :func:`write_view_predictions`: val, val_shift, holdout (V, N, C),
    with val_ids, val_y, holdout_ids, holdout_y.
    """
    model.eval()
    ids, labels = index.image_ids(), np.asarray(index.labels)
    val, holdout = np.asarray(val, dtype=np.int64), np.asarray(holdout, dtype=np.int64)
    out = {"val_ids": np.array([ids[j] for j in val]), "val_y": labels[val],
           "val": all_views(model, images[val], normalize, batch_size)}
    rows = [(ids[j], labels[j]) for j in val]
    write_probs(out_dir / VAL_TTA, ["ID", "target"], rows, mean_of(out["val"], views))
    write_probs(out_dir / VAL_SINGLE, ["ID", "target"], rows, mean_of(out["val"], ["none"]))
    if shifted is not None:
        out["val_shift"] = all_views(model, shifted, normalize, batch_size)
        write_probs(out_dir / VAL_SHIFT, ["ID", "target"], rows, mean_of(out["val_shift"], views))
    if len(holdout):
        out.update(holdout_ids=np.array([ids[j] for j in holdout]), holdout_y=labels[holdout],
                   holdout=all_views(model, images[holdout], normalize, batch_size))
        write_probs(out_dir / HOLDOUT, ["ID", "target"], [(ids[j], labels[j]) for j in holdout],
                    mean_of(out["holdout"], views))
        if holdout_shifted is not None:
            out["holdout_shift"] = all_views(model, holdout_shifted, normalize, batch_size)
            write_probs(out_dir / HOLDOUT_SHIFT, ["ID", "target"], [(ids[j], labels[j]) for j in holdout],
                        mean_of(out["holdout_shift"], views))
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
