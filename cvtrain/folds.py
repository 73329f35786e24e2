"""The splits: scikit-learn's (``KFold``, ``StratifiedKFold``, ``train_test_split``, each shuffled with
``random_state=seed``), written out on numpy's ``RandomState``. The same images for the same seed
(tests/test_split_algorithms.py holds them equal to scikit-learn's), no scikit-learn import in the
trainer (with scipy, about a second per process), and folds that no scikit-learn upgrade can move.
Which split a run uses: cvtrain.split and cvtrain.data.split_indices.
"""
from __future__ import annotations

import numpy as np


def _rest(n: int, test: np.ndarray) -> np.ndarray:
    keep = np.ones(n, dtype=bool)
    keep[test] = False
    return np.flatnonzero(keep)


def _check_fold(fold: int, folds: int) -> None:
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} of {folds}: folds are numbered 0 to {folds - 1}")


def kfold(n: int, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions of fold ``fold`` of ``KFold(folds, shuffle=True, random_state=seed)``."""
    if not 2 <= folds <= n:
        raise ValueError(f"{folds} folds of {n} images: need 2 <= folds <= images")
    _check_fold(fold, folds)
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(folds, n // folds)
    sizes[: n % folds] += 1
    start = int(sizes[:fold].sum())
    test = np.sort(order[start:start + sizes[fold]])
    return _rest(n, test), test


def stratified_kfold(y, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions of fold ``fold`` of ``StratifiedKFold(folds, shuffle=True, random_state=seed)``:
    each class dealt round-robin over the folds, each class's fold labels shuffled."""
    _check_fold(fold, folds)
    y = np.asarray(y)
    _, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    _, by_appearance = np.unique(first, return_inverse=True)
    label = by_appearance[inverse]  # classes numbered in order of first appearance
    if np.all(folds > np.bincount(label)):
        raise ValueError(f"{folds} folds: more than the images of every class")
    dealt = np.sort(label)
    per_fold = np.asarray([np.bincount(dealt[i::folds], minlength=len(first)) for i in range(folds)])
    rng = np.random.RandomState(seed)
    fold_of = np.empty(len(y), dtype=np.int64)
    for k in range(len(first)):
        mine = np.arange(folds).repeat(per_fold[:, k])
        rng.shuffle(mine)
        fold_of[label == k] = mine
    test = np.flatnonzero(fold_of == fold)
    return _rest(len(y), test), test


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Per class, how many of ``draws`` to take: the floor of its share, then one more for the largest
    remainders (ties drawn at random)."""
    share = counts / counts.sum() * draws
    out = np.floor(share)
    need = int(draws - out.sum())
    if need > 0:
        left = share - out
        for value in np.sort(np.unique(left))[::-1]:
            (tied,) = np.where(left == value)
            now = min(len(tied), need)
            out[rng.choice(tied, size=now, replace=False)] += 1
            need -= now
            if need == 0:
                break
    return out.astype(int)


def shuffle_split(n: int, n_test: int, seed: int, y=None) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions of ``train_test_split(range(n), test_size=n_test, random_state=seed,
    stratify=y)``, unordered: with ``y``, each class in proportion (every class needs 2 images)."""
    n_train = n - n_test
    if not 0 < n_test < n:
        raise ValueError(f"{n_test} of {n} images to validate: need at least one on each side")
    rng = np.random.RandomState(seed)
    if y is None:
        order = rng.permutation(n)
        return order[n_test:], order[:n_test]
    _, label, counts = np.unique(np.asarray(y), return_inverse=True, return_counts=True)
    if counts.min() < 2 or min(n_train, n_test) < len(counts):
        raise ValueError(f"a stratified split of {n} images ({n_test} held out) needs >= 2 images per class "
                         f"and >= {len(counts)} (the classes) on each side")
    members = np.split(np.argsort(label, kind="stable"), np.cumsum(counts)[:-1])
    take_train = _approximate_mode(counts, n_train, rng)
    take_test = _approximate_mode(counts - take_train, n_test, rng)
    train, test = [], []
    for k, idx in enumerate(members):
        shuffled = idx.take(rng.permutation(counts[k]), mode="clip")
        train.extend(shuffled[:take_train[k]])
        test.extend(shuffled[take_train[k]:take_train[k] + take_test[k]])
    return np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)
