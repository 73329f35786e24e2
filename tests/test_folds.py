"""Splits and folds: stratified whenever they can be, a holdout no split touches."""
import logging

import numpy as np
import pytest

from cvtrain import data as D
from cvtrain.config import ConfigError, DataConfig, mapping_layer, resolve

LABELS = [0] * 50 + [1] * 50 + [2] * 3


def folds_of(labels, **kw):
    return [D.split_indices(labels, DataConfig(folds=5, fold=f, **kw), seed=0) for f in range(5)]


def test_folds_stay_stratified_when_one_class_is_smaller_than_the_number_of_folds(caplog):
    y = np.asarray(LABELS)
    with caplog.at_level(logging.WARNING, logger="cvtrain.data"):
        folds = folds_of(LABELS)
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert np.bincount(y[va], minlength=3)[:2].tolist() == [10, 10]   # was 6 to 15 with plain KFold
        assert np.bincount(y[va], minlength=3)[2] <= 1
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(len(y)))
    warned = [r.getMessage() for r in caplog.records if "fewer than the 5 folds" in r.getMessage()]
    assert len(warned) == 5 and all(m.startswith("class 2 has 3 image(s)") for m in warned)
    assert D.folds_stratified(LABELS, DataConfig(folds=5)) and D.small_classes(LABELS, 5) == {2: 3}


def test_folds_are_plain_only_when_a_class_has_one_image_or_stratify_is_off():
    assert not D.folds_stratified(LABELS + [3], DataConfig(folds=5))
    assert not D.folds_stratified(LABELS, DataConfig(folds=5, stratify=False))
    tr, va = D.split_indices(LABELS + [3], DataConfig(folds=5, fold=0), seed=0)
    assert len(tr) + len(va) == len(LABELS) + 1


def test_the_holdout_is_the_same_for_every_seed_and_fold_and_in_no_split():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200).tolist()
    rest, held = D.holdout_indices(labels, DataConfig(holdout=0.1, holdout_seed=3))
    assert len(held) == 20 and sorted(np.concatenate([rest, held]).tolist()) == list(range(200))
    want = np.bincount(np.asarray(labels), minlength=4) * 0.1
    assert np.abs(np.bincount(np.asarray(labels)[held], minlength=4) - want).max() < 1   # stratified
    for cfg, seed in [(DataConfig(holdout=0.1, holdout_seed=3), 1), (DataConfig(holdout=0.1, holdout_seed=3), 2),
                      (DataConfig(holdout=0.1, holdout_seed=3, split_seed=9), 1)] + \
                     [(DataConfig(holdout=0.1, holdout_seed=3, folds=3, fold=f), 5) for f in range(3)]:
        assert D.holdout_indices(labels, cfg)[1].tolist() == held.tolist()
        tr, va = D.split_indices(labels, cfg, seed)
        assert not (set(tr) | set(va)) & set(held.tolist()) and len(tr) + len(va) == 180
    assert len(D.holdout_indices(labels, DataConfig())[1]) == 0


def test_a_holdout_of_half_or_more_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"holdout=0.5 \(from the test\): must be in \[0, 0.5\)"):
        resolve(mapping_layer({"holdout": 0.5}, "the test"))
