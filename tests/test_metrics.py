"""Macro-F1 as the competition scores it: scikit-learn's f1_score(average="macro")."""
import csv
import json
import logging
import shutil

import numpy as np
import pytest
from sklearn.metrics import f1_score

from cvtrain.metrics import confusion, epoch_metrics, macro_f1, macro_f1_from_confusion, per_class_report

CASES = {
    # 17 classes listed; the labels use a few of them
    "absent_from_both": ([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]),
    "predicted_but_absent_from_truth": ([0, 0, 1, 1], [0, 5, 1, 1]),
    "in_truth_but_never_predicted": ([0, 1, 2, 3], [0, 1, 1, 1]),
    "all_wrong": ([0, 1], [1, 0]),
    "one_class": ([4, 4, 4], [4, 4, 4]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_macro_f1_equals_scikit_learns_competition_scorer(name):
    y_true, y_pred = CASES[name]
    expected = f1_score(y_true, y_pred, average="macro")
    assert macro_f1(y_true, y_pred) == pytest.approx(expected, abs=1e-12)
    assert epoch_metrics(y_true, y_pred)["f1"] == pytest.approx(expected, abs=1e-12)
    assert macro_f1_from_confusion(confusion(y_true, y_pred, 17)) == pytest.approx(expected, abs=1e-12)


def test_macro_f1_on_random_predictions_over_a_few_of_17_classes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        k = rng.integers(2, 17)
        y_true = rng.integers(0, k, size=60)
        y_pred = np.where(rng.random(60) < 0.6, y_true, rng.integers(0, 17, size=60))
        expected = f1_score(y_true, y_pred, average="macro")
        assert macro_f1(y_true, y_pred) == pytest.approx(expected, abs=1e-12)
        assert macro_f1_from_confusion(confusion(y_true, y_pred, 17)) == pytest.approx(expected, abs=1e-12)


def test_listing_absent_classes_would_understate_the_score():
    y_true, y_pred = CASES["absent_from_both"]
    listed = f1_score(y_true, y_pred, labels=list(range(17)), average="macro", zero_division=0)
    assert macro_f1(y_true, y_pred) > 5 * listed


def test_per_class_table_keeps_every_listed_class_and_marks_the_absent_ones():
    names = [f"c{i}" for i in range(17)]
    rows = per_class_report([0, 0, 1, 1], [0, 5, 1, 1], names)
    assert [r["class"] for r in rows] == names
    by = {r["class"]: r for r in rows}
    assert by["c0"]["in_macro_f1"] and by["c0"]["support"] == 2 and by["c0"]["f1"] == pytest.approx(2 / 3)
    assert by["c5"]["in_macro_f1"] and by["c5"]["support"] == 0 and by["c5"]["f1"] == 0.0
    assert by["c5"]["note"] == "predicted, absent from the labels"
    assert not by["c9"]["in_macro_f1"] and by["c9"]["support"] == 0 and by["c9"]["f1"] is None
    assert by["c9"]["note"] == "absent from the labels and predictions"
    scored = [r["f1"] for r in rows if r["in_macro_f1"]]
    assert np.mean(scored) == pytest.approx(macro_f1([0, 0, 1, 1], [0, 5, 1, 1]))


@pytest.fixture
def three_class_dir(demo_dir, tmp_path):
    """The demo data cut to 3 of its 17 classes; meta.csv still lists all 17."""
    out = tmp_path / "three"
    shutil.copytree(demo_dir, out, symlinks=True)
    rows = [r for r in csv.DictReader((demo_dir / "train.csv").open()) if int(r["target"]) in (0, 3, 7)]
    with (out / "train.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["ID", "target"])
        w.writeheader()
        w.writerows(rows)
    return out


def test_best_val_f1_is_the_competitions_macro_f1_of_the_best_epochs_matrix(tiny, three_class_dir, caplog):
    from cvtrain.engine import train

    caplog.set_level(logging.WARNING, logger="cvtrain.engine")
    result = train(tiny(data_dir=str(three_class_dir), epochs=3, learning_rate=0.01))
    summary = json.loads((result.output_dir / "summary.json").read_text())
    cm = json.loads((result.output_dir / "confusion_matrix.json").read_text())
    assert cm["epoch"] == summary["best_epoch"] and len(cm["matrix"]) == 17
    assert summary["best_val_f1"] == pytest.approx(macro_f1_from_confusion(cm["matrix"]), abs=1e-9)
    m = np.asarray(cm["matrix"])
    y_true = np.repeat(np.arange(17), m.sum(axis=1))
    y_pred = np.concatenate([np.repeat(np.arange(17), row) for row in m])
    assert summary["best_val_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=1e-9)
    per_class = json.loads((result.output_dir / "per_class.json").read_text())
    assert len(per_class) == 17 and sum(r["in_macro_f1"] for r in per_class) >= 3
    assert all(r["support"] == 0 for i, r in enumerate(per_class) if i not in (0, 3, 7))
    warnings = [r.getMessage() for r in caplog.records if "no image of 14 class(es)" in r.getMessage()]
    assert len(warnings) == 1, "the trainer says once which listed classes the data lacks"


def test_every_metric_equals_scikit_learns_on_random_labels():
    """macro-F1, accuracy, the confusion matrix and the per-class table, against scikit-learn's, including
    labels past the listed classes (a model with more outputs than meta.csv names) and absent classes."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    for _ in range(200):
        n, listed = int(rng.integers(1, 80)), int(rng.integers(2, 18))
        y_true = rng.integers(0, listed, n)
        y_pred = rng.integers(0, listed + int(rng.integers(0, 3)), n)
        assert macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0),
                                                         abs=1e-12)
        assert epoch_metrics(y_true, y_pred)["acc"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
        labels = list(range(listed))
        assert np.array_equal(confusion(y_true, y_pred, listed), confusion_matrix(y_true, y_pred, labels=labels))
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        rows = per_class_report(y_true, y_pred, [f"c{i}" for i in labels])
        for i, row in enumerate(rows):
            assert row["support"] == s[i]
            if row["in_macro_f1"]:
                assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[i], r[i], f[i]), abs=1e-12)
