"""Finalize's ensemble selection and its estimates, on arrays (no training)."""
import numpy as np
import pytest
from sklearn.metrics import f1_score

from agent import ensemble as E


def sklearn_macro_f1(y, p):
    return f1_score(y, p, average="macro", zero_division=0)


def onehot(labels, c, sure=0.9):
    p = np.full((len(labels), c), (1 - sure) / (c - 1))
    p[np.arange(len(labels)), labels] = sure
    return p


def test_fast_macro_f1_is_the_competitions():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, p = rng.integers(0, 6, 50), rng.integers(0, 7, 50)
        assert E.macro_f1(y, p) == pytest.approx(sklearn_macro_f1(y, p))


def test_selection_keeps_a_perfect_member_alone_where_the_equal_mean_is_worse():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    noise = [onehot(rng.integers(0, 4, 200), 4, 0.99) for _ in range(2)]
    probs = np.stack([noise[0], onehot(y, 4, 0.4), noise[1]])
    counts = E.greedy_select(probs, y)
    assert counts.tolist() == [0, 1, 0]
    assert E.macro_f1(y, probs.mean(0).argmax(1)) < 1.0


def test_selection_combines_complementary_members_beyond_either_alone():
    y = np.arange(100) % 5
    wrong = (y + 1) % 5
    half = np.arange(100) < 50
    a = np.where(half[:, None], onehot(y, 5, 0.9), onehot(wrong, 5, 0.3))   # sure and right on the first half
    b = np.where(half[:, None], onehot(wrong, 5, 0.3), onehot(y, 5, 0.9))   # sure and right on the second
    probs = np.stack([a, b])
    counts = E.greedy_select(probs, y)
    assert counts.tolist() == [1, 1]
    assert E.macro_f1(y, E.combine(probs, E.weights_of(counts)).argmax(1)) == 1.0
    assert max(E.macro_f1(y, p.argmax(1)) for p in probs) < 0.7


def test_selection_never_scores_below_the_best_single_in_sample():
    rng = np.random.default_rng(2)
    for _ in range(10):
        y = rng.integers(0, 5, 80)
        probs = rng.dirichlet(np.ones(5), size=(4, 80)) + 0.3 * np.eye(5)[y]
        w = E.weights_of(E.greedy_select(probs, y))
        best = max(E.macro_f1(y, p.argmax(1)) for p in probs)
        assert E.macro_f1(y, E.combine(probs, w).argmax(1)) >= best - 1e-12


def test_nested_predictions_of_a_fold_never_depend_on_that_folds_labels():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 120)
    fold_of = np.arange(120) % 3
    probs = rng.dirichlet(np.ones(4), size=(3, 120)) + 0.4 * np.eye(4)[y] * rng.random((3, 120, 1))
    pred, weights = E.nested_selection(probs, y, fold_of)
    for f in range(3):
        other = y.copy()
        other[fold_of == f] = rng.integers(0, 4, (fold_of == f).sum())   # the held-out fold's truth changes
        pred2, weights2 = E.nested_selection(probs, other, fold_of)
        held = fold_of == f
        assert (pred2[held] == pred[held]).all() and np.allclose(weights2[f], weights[f])
        w = E.weights_of(E.greedy_select(probs[:, ~held], y[~held]))
        assert (E.combine(probs[:, held], w).argmax(1) == pred[held]).all()


def test_bootstrap_scores_each_resample_as_the_competition_would():
    rng = np.random.default_rng(4)
    y, a, b = rng.integers(0, 5, 60), rng.integers(0, 5, 60), rng.integers(0, 5, 60)
    boots = E.bootstrap(y, {"a": a, "b": b}, 5, n_boot=30, seed=7)
    counts = E.resample_counts(60, 30, 7).astype(int)
    for i in range(30):
        pick = np.repeat(np.arange(60), counts[i])
        assert boots[0, i] == pytest.approx(sklearn_macro_f1(y[pick], a[pick]))
        assert boots[1, i] == pytest.approx(sklearn_macro_f1(y[pick], b[pick]))
    assert E.prob_beats(boots[0], boots[0]) == 0.5


def test_score_reports_three_estimates_with_intervals_and_the_chance_of_beating_the_best():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 300)
    fold_of = np.arange(300) % 3
    probs = np.stack([rng.dirichlet(np.ones(4), 300) + s * np.eye(4)[y] for s in (0.5, 0.4, 0.1)])
    out = E.score(probs, y, fold_of, n_boot=200)
    assert out["best_index"] == 0 and sum(out["weights"]) == pytest.approx(1.0)
    for name in ("best_single", "equal", "selected"):
        lo, hi = out[f"{name}_ci90"]
        assert lo <= out[name] <= hi and len(out[f"{name}_folds"]) == 3
    assert 0.0 <= out["p_selected_beats_best_single"] <= 1.0 and len(out["single_ci90"]) == 3
