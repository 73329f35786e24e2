"""Predictions of a run's final model on the images it did not train on, for finalize.

Held-out images are predicted with the same test-time views as the test set, so the
out-of-fold figure scores the predictor that is submitted; the plain view ("none") is
written beside it. The model is the one in memory at the end: the final epoch's, also
when the run was resumed after its last epoch (no epoch ran in this process).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .data import DatasetIndex
from .predict import predict_probs

#: The files finalize reads (agent.fold_outputs names them too).
VAL_TTA, VAL_SINGLE, HOLDOUT = "val_predictions.csv", "val_predictions_single.csv", "holdout_predictions.csv"


def write_heldout_predictions(model, images: np.ndarray, index: DatasetIndex, val: np.ndarray, holdout: np.ndarray,
                              views: list[str], normalize, batch_size: int, out_dir: Path) -> list[Path]:
    """val_predictions.csv (``views`` averaged), val_predictions_single.csv (no view) and, when the run
    has a holdout, holdout_predictions.csv (``views``). Rows: ID, target, p0..pC-1.

    A shifted validation copy (val_shift) would be predicted here the same way, into its own file,
    for finalize to score beside the clean figure.
    """
    model.eval()
    ids, labels = index.image_ids(), index.labels
    jobs = [(VAL_TTA, val, views), (VAL_SINGLE, val, ["none"])]
    if len(holdout):
        jobs.append((HOLDOUT, holdout, views))
    written, done = [], {}
    for name, idx, vs in jobs:
        key = (id(idx), tuple(vs))
        if key not in done:  # views ["none"]: one pass serves both validation files
            done[key] = predict_probs(model, images[np.asarray(idx, dtype=np.int64)], normalize, vs,
                                      batch_size).numpy()
        written.append(write_probs(out_dir / name, ["ID", "target"], [(ids[j], labels[j]) for j in idx], done[key]))
    return written


def write_probs(path: Path, head: list[str], rows: list[tuple], probs: np.ndarray) -> Path:
    """One row per image, probabilities to 6 significant digits; written whole or not at all."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(head + [f"p{c}" for c in range(probs.shape[1])])
        w.writerows([*r, *(f"{v:.6g}" for v in p)] for r, p in zip(rows, probs))
    tmp.replace(path)
    return path
