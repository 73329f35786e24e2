"""Choosing and scoring finalize's ensemble on out-of-fold predictions: pure functions on arrays.

* :func:`greedy_select`: forward selection with replacement (Caruana et al., 2004, "Ensemble
  selection from libraries of models"): start empty, repeatedly add the member whose addition
  gives the best macro-F1, keep the best ensemble seen. Weights are how often each member was
  picked. The first pick is the best single member, so in sample the selection never scores
  below it.
* :func:`nested_selection`: the selection's own estimate, not tuned on what it scores: for each
  fold, select on the other folds' out-of-fold predictions and predict the held-out fold.
* :func:`bootstrap`: 90% intervals of macro-F1 and the paired probability that one predictor
  beats another, over the same resamples of the images.

Arrays: ``probs`` is (K members, N images, C classes) softmax, ``y`` (N,) true labels,
``fold_of`` (N,) the fold that held each image out.
"""
from __future__ import annotations

import numpy as np

from cvtrain.metrics import macro_f1  # the competition's scorer (callers use E.macro_f1)

#: Selection steps: enough for weights in steps of 1/20 (Caruana's libraries were larger).
ROUNDS = 20


def greedy_select(probs: np.ndarray, y: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    """How often each member is picked by forward selection with replacement (ties: the lower index).

    The returned counts are those of the best-scoring ensemble over all ``rounds`` steps (the
    earliest when several score alike), so adding members never lowers the in-sample figure.
    """
    k, _, c = probs.shape
    total = np.zeros(probs.shape[1:], dtype=np.float64)
    counts = np.zeros(k, dtype=np.int64)
    best, best_counts = -1.0, counts.copy()
    for _ in range(rounds):
        scores = [macro_f1(y, (total + probs[j]).argmax(1), c) for j in range(k)]
        j = int(np.argmax(scores))
        total += probs[j]
        counts[j] += 1
        if scores[j] > best + 1e-12:
            best, best_counts = scores[j], counts.copy()
    return best_counts


def weights_of(counts: np.ndarray) -> np.ndarray:
    return counts / counts.sum()


def combine(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted mean of the members' softmax: (N, C)."""
    return np.tensordot(np.asarray(weights, dtype=np.float64), probs, axes=1)


def nested_selection(probs: np.ndarray, y: np.ndarray, fold_of: np.ndarray,
                     rounds: int = ROUNDS) -> tuple[np.ndarray, dict]:
    """Out-of-fold predictions of "select on the other folds, predict this one", and each fold's weights."""
    weights = {int(f): weights_of(greedy_select(probs[:, fold_of != f], y[fold_of != f], rounds))
               for f in np.unique(fold_of)}
    return predict_nested(probs, fold_of, weights), weights


def predict_nested(probs: np.ndarray, fold_of: np.ndarray, fold_weights: dict) -> np.ndarray:
    """Each held-out fold predicted by the ensemble with that fold's weights (chosen on the other folds)."""
    pred = np.empty(probs.shape[1], dtype=np.int64)
    for f, w in fold_weights.items():
        held = fold_of == int(f)
        pred[held] = combine(probs[:, held], np.asarray(w)).argmax(1)
    return pred


def per_fold_f1(y: np.ndarray, pred: np.ndarray, fold_of: np.ndarray, n_classes: int) -> list[float]:
    return [macro_f1(y[fold_of == f], pred[fold_of == f], n_classes) for f in np.unique(fold_of)]


def resample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each of ``n`` images is drawn in each of ``n_boot`` resamples with replacement: (B, N)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def bootstrap(y: np.ndarray, preds: dict[str, np.ndarray], n_classes: int, n_boot: int = 2000,
              seed: int = 0) -> np.ndarray:
    """Macro-F1 of each predictor on the same ``n_boot`` resamples of the images: (len(preds), n_boot)."""
    counts = resample_counts(len(y), n_boot, seed)
    truth = np.eye(n_classes)[y]                                                        # (N, C)
    true_n = counts @ truth
    out = []
    for p in preds.values():
        guess = np.eye(n_classes)[p]
        tp, pred_n = counts @ (truth * guess), counts @ guess
        denom = true_n + pred_n
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 0.0)
        out.append(f1.sum(1) / np.maximum((denom > 0).sum(1), 1))
    return np.array(out)


def interval90(samples: np.ndarray) -> list[float]:
    return [float(np.percentile(samples, 5)), float(np.percentile(samples, 95))]


def prob_beats(a: np.ndarray, b: np.ndarray) -> float:
    """Paired bootstrap probability that ``a`` scores above ``b`` (ties count half)."""
    return float(np.mean(a > b) + 0.5 * np.mean(a == b))


def score(probs: np.ndarray, y: np.ndarray, fold_of: np.ndarray, n_boot: int = 2000, seed: int = 0,
          rounds: int = ROUNDS) -> dict:
    """Everything finalize reports about its members on one set of out-of-fold predictions.

    ``weights`` (selected on all the OOF predictions) are what the submission uses; the
    ``selected`` figure is nested, so it does not score the weights on what chose them.
    """
    c = probs.shape[2]
    singles = [macro_f1(y, p.argmax(1), c) for p in probs]
    best = int(np.argmax(singles))
    equal = probs.mean(0).argmax(1)
    nested, fold_weights = nested_selection(probs, y, fold_of, rounds)
    preds = {"best_single": probs[best].argmax(1), "equal": equal, "selected": nested}
    boots = bootstrap(y, preds, c, n_boot, seed)
    out = {"weights": weights_of(greedy_select(probs, y, rounds)).tolist(), "best_index": best,
           "single_f1": singles, "fold_weights": {f: w.tolist() for f, w in fold_weights.items()},
           "p_selected_beats_best_single": prob_beats(boots[2], boots[0])}
    for (name, pred), b in zip(preds.items(), boots):
        out[name] = macro_f1(y, pred, c)
        out[f"{name}_ci90"] = interval90(b)
        out[f"{name}_folds"] = per_fold_f1(y, pred, fold_of, c)
    out["single_ci90"] = [interval90(b) for b in bootstrap(y, {i: p.argmax(1) for i, p in enumerate(probs)},
                                                          c, n_boot, seed)]
    return out
