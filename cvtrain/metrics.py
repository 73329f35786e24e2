"""Classification metrics, scored as the competition scores them, on numpy arrays.

Macro-F1 is scikit-learn's ``f1_score(y_true, y_pred, average="macro", zero_division=0)``
(tests/test_metrics.py holds the two equal): the mean F1 over the classes present in the truth or
the predictions. A class that ``meta.csv`` lists but that appears in neither adds nothing (listing
every class would count it as F1 0 and understate any split that lacks a class). Computed here
from label counts, without scikit-learn: importing it (with scipy) cost every trainer process a second.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _counts(y_true, y_pred, n: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, true count, predicted count) per label 0..n-1 (n: past the largest label seen)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    seen = int(max(y_true.max(), y_pred.max())) + 1 if len(y_true) else 0
    size = max(n or 0, seen)
    tp = np.bincount(y_true[y_true == y_pred], minlength=size)
    return tp, np.bincount(y_true, minlength=size), np.bincount(y_pred, minlength=size)


def macro_f1(y_true, y_pred, n_classes: int | None = None) -> float:
    """The competition's macro-F1: over the labels in truth or prediction (0.0 for no samples)."""
    if len(y_true) == 0:
        return 0.0
    tp, true_n, pred_n = _counts(y_true, y_pred, n_classes)
    denom = true_n + pred_n
    scored = denom > 0
    return float((2 * tp[scored] / denom[scored]).mean())


def macro_f1_from_confusion(cm) -> float:
    """Macro-F1 of a confusion matrix (rows true, columns predicted) over the classes it scores."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    true_n, pred_n = cm.sum(axis=1), cm.sum(axis=0)
    scored = (true_n + pred_n) > 0
    if not scored.any():
        return 0.0
    f1 = 2 * tp[scored] / (true_n[scored] + pred_n[scored])
    return float(f1.mean())


def epoch_metrics(y_true, y_pred) -> dict:
    if len(y_true) == 0:
        return {"acc": 0.0, "f1": 0.0}
    return {"acc": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))), "f1": macro_f1(y_true, y_pred)}


def per_class_report(y_true, y_pred, class_names: list[str]) -> list[dict]:
    """One row per listed class, absent ones included: ``in_macro_f1`` says whether it was scored.

    A class with support 0 that was never predicted is absent from this split: its F1 is
    reported as None, not 0, and it does not count in macro-F1.
    """
    n = len(class_names)
    tp, support, predicted = (c[:n] for c in _counts(y_true, y_pred, n))
    rows = []
    for i, c in enumerate(class_names):
        scored = bool(support[i] > 0 or predicted[i] > 0)
        p = tp[i] / predicted[i] if predicted[i] else 0.0  # zero_division=0, as scikit-learn's
        r = tp[i] / support[i] if support[i] else 0.0
        f = 2 * tp[i] / (support[i] + predicted[i]) if scored else 0.0
        rows.append({"class": c, "precision": float(p) if scored else None,
                     "recall": float(r) if scored else None, "f1": float(f) if scored else None,
                     "support": int(support[i]), "predicted": int(predicted[i]), "in_macro_f1": scored,
                     "note": "" if support[i] > 0 else ("predicted, absent from the labels" if scored
                                                        else "absent from the labels and predictions")})
    return rows


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Rows true, columns predicted, labels 0..num_classes-1 (a pair with a label outside is left out)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    keep = (y_true >= 0) & (y_true < num_classes) & (y_pred >= 0) & (y_pred < num_classes)
    cells = np.bincount(y_true[keep] * num_classes + y_pred[keep], minlength=num_classes * num_classes)
    return cells.reshape(num_classes, num_classes)


def save_confusion_png(cm: np.ndarray, class_names: list[str], path, cell: int = 28) -> None:
    """A PNG of the confusion matrix for offline use, drawn with PIL (20x faster than matplotlib)."""
    n = len(class_names)
    font = ImageFont.load_default()
    labels = [c[:24] for c in class_names]
    label_w = max(font.getbbox(t)[2] for t in labels) + 10 if labels else 10
    left, top = label_w + 20, label_w + 20
    img = Image.new("RGB", (left + n * cell + 10, top + n * cell + 30), "white")
    d = ImageDraw.Draw(img)
    row_max = cm.sum(axis=1, keepdims=True).clip(min=1)
    for i in range(n):
        for j in range(n):
            frac = float(cm[i, j] / row_max[i, 0])  # row-normalised: recall per true class
            shade = int(255 - 200 * frac)
            x0, y0 = left + j * cell, top + i * cell
            d.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=(shade, shade, 255), outline=(220, 220, 220))
            if cm[i, j]:
                txt = str(int(cm[i, j]))
                w = font.getbbox(txt)[2]
                d.text((x0 + (cell - w) / 2, y0 + cell / 2 - 6), txt, fill="white" if frac > 0.5 else "black", font=font)
    for i, t in enumerate(labels):
        w = font.getbbox(t)[2]
        d.text((left - w - 6, top + i * cell + cell / 2 - 6), t, fill="black", font=font)
        col = Image.new("RGBA", (label_w, 14), (255, 255, 255, 0))
        ImageDraw.Draw(col).text((0, 0), t, fill="black", font=font)
        col = col.rotate(90, expand=True)
        img.paste(col, (left + i * cell + cell // 2 - 7, top - 6 - col.size[1]), col)
    d.text((left, top + n * cell + 8), "columns: predicted, rows: true (shade: row-normalised)", fill="black", font=font)
    img.save(path)
