"""The trainer's own splits are scikit-learn's, image for image: a sweep recorded before they were
written out (and any user's notebook using scikit-learn with the same seed) keeps its folds."""
import numpy as np
import pytest
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from cvtrain.folds import kfold, shuffle_split, stratified_kfold


def _labels(rng, n, classes, skew):
    p = rng.dirichlet(np.full(classes, skew))
    y = rng.choice(classes, size=n, p=p)
    return y


CASES = [(n, c, skew, seed) for n, c, skew, seed in
         [(10, 2, 5.0, 0), (31, 3, 1.0, 1), (100, 17, 0.7, 2), (137, 17, 3.0, 3), (64, 5, 0.3, 4),
          (250, 17, 0.5, 5), (19, 4, 10.0, 6), (500, 10, 0.2, 2**31 - 1)]]


@pytest.mark.parametrize("n,classes,skew,seed", CASES)
def test_folds_are_scikit_learns(n, classes, skew, seed):
    rng = np.random.default_rng(seed % 1000)
    y = _labels(rng, n, classes, skew)
    for folds in (2, 3, 5):
        plain = list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.arange(n)))
        strat_ok = np.bincount(y).max() >= folds
        if strat_ok:
            with _quiet():
                strat = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.arange(n), y))
        for fold in range(folds):
            tr, te = kfold(n, folds, fold, seed)
            assert np.array_equal(np.sort(te), np.sort(plain[fold][1])) and np.array_equal(tr, np.sort(plain[fold][0]))
            if strat_ok:
                tr, te = stratified_kfold(y, folds, fold, seed)
                assert np.array_equal(te, np.sort(strat[fold][1])) and np.array_equal(tr, np.sort(strat[fold][0]))


@pytest.mark.parametrize("n,classes,skew,seed", CASES)
def test_a_held_out_slice_is_scikit_learns_train_test_split(n, classes, skew, seed):
    rng = np.random.default_rng(seed % 1000)
    y = _labels(rng, n, classes, skew)
    counts = np.bincount(y)
    for frac in (0.1, 0.2, 0.5):
        n_test = max(1, int(round(frac * n)))
        want_tr, want_te = train_test_split(np.arange(n), test_size=n_test, random_state=seed)
        tr, te = shuffle_split(n, n_test, seed)
        assert set(te) == set(want_te) and set(tr) == set(want_tr)
        if counts[counts > 0].min() >= 2 and min(n_test, n - n_test) >= (counts > 0).sum():
            want_tr, want_te = train_test_split(np.arange(n), test_size=n_test, random_state=seed, stratify=y)
            tr, te = shuffle_split(n, n_test, seed, y)
            assert sorted(te) == sorted(want_te) and sorted(tr) == sorted(want_tr)


def test_what_scikit_learn_refuses_is_refused():
    y = np.array([0, 0, 0, 1])  # class 1 has one image
    with pytest.raises(ValueError):
        train_test_split(np.arange(4), test_size=2, random_state=0, stratify=y)
    with pytest.raises(ValueError, match="2 images per class"):
        shuffle_split(4, 2, 0, y)
    with pytest.raises(ValueError, match="at least one on each side"):
        shuffle_split(4, 4, 0)
    with pytest.raises(ValueError, match="more than the images of every class"):
        stratified_kfold(np.array([0, 1, 2]), 2, 0, 0)
    with pytest.raises(ValueError, match="folds"):
        kfold(3, 4, 0, 0)
    for fold in (-1, 3):  # scikit-learn's list of folds has no such fold either
        with pytest.raises(ValueError, match="numbered 0 to 2"):
            kfold(9, 3, fold, 0)
        with pytest.raises(ValueError, match="numbered 0 to 2"):
            stratified_kfold(np.arange(9) % 3, 3, fold, 0)


class _quiet:
    """scikit-learn warns when a class has fewer images than folds; the trainer says so itself."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", UserWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)
