"""Synthetic document images for the 17 competition classes, in the competition layout.

Each class has a page template (header band, text blocks, tables, photo box,
stamp, plate, dashboard dials); pairs of classes share most of their template
so the task is not trivially separable. Every page is jittered (shift, scale,
slight skew, brightness, clutter), and the test set is shifted like the
competition's (:data:`TEST_SHIFT`: any-angle rotations for half the pages, other
aspect ratios, brighter, blurrier, noisier). The test labels (``test_answers.csv``)
and what the generator applied to each test image (``test_shift.json``) sit beside
the competition files for scoring; training never reads them. Deterministic by seed.
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASS_NAMES = [
    "account_number", "application_for_payment_of_pregnancy_medical_expenses", "car_dashboard",
    "confirmation_of_admission_and_discharge", "diagnosis", "driver_lisence", "medical_bill_receipts",
    "medical_outpatient_certificate", "national_id_card", "passport", "payment_confirmation",
    "pharmaceutical_receipt", "prescription", "resume", "statement_of_opinion",
    "vehicle_registration_certificate", "vehicle_registration_plate",
]

# Per class: (kind, header colour, text-line count, table (rows, cols) or None, photo, stamp)
_TEMPLATES = {
    0: ("form", (40, 70, 160), 6, (4, 2), False, False),
    1: ("form", (170, 80, 120), 14, (3, 3), False, True),
    2: ("dash", None, 0, None, False, False),
    3: ("form", (60, 140, 90), 10, (2, 4), False, True),
    4: ("form", (60, 140, 90), 12, None, False, True),
    5: ("card", (200, 160, 60), 4, None, True, False),
    6: ("form", (90, 90, 90), 5, (8, 4), False, False),
    7: ("form", (60, 140, 90), 9, (2, 3), False, True),
    8: ("card", (80, 130, 200), 4, None, True, False),
    9: ("card", (120, 40, 60), 6, None, True, True),
    10: ("form", (40, 70, 160), 5, (5, 3), False, True),
    11: ("form", (90, 90, 90), 4, (7, 3), False, False),
    12: ("form", (150, 150, 60), 8, (4, 2), False, True),
    13: ("form", (30, 30, 30), 18, None, True, False),
    14: ("form", (150, 150, 60), 16, None, False, True),
    15: ("form", (110, 60, 150), 6, (6, 2), False, True),
    16: ("plate", None, 0, None, False, False),
}

W, H = 240, 320  # portrait page; documents in the competition are about 3:4


def _page(cls: int, rng: random.Random) -> Image.Image:
    kind, header, n_lines, table, photo, stamp = _TEMPLATES[cls]
    paper = tuple(int(rng.uniform(225, 255)) for _ in range(3))
    if kind == "dash":
        return _dashboard(rng)
    if kind == "plate":
        return _plate(rng)
    im = Image.new("RGB", (W, H), paper)
    d = ImageDraw.Draw(im)
    if kind == "card":  # ID-style card photographed on a desk
        desk = tuple(int(rng.uniform(60, 160)) for _ in range(3))
        im.paste(desk, (0, 0, W, H))
        x0, y0 = rng.randint(5, 30), rng.randint(60, 110)
        x1, y1 = W - rng.randint(5, 30), y0 + rng.randint(130, 170)
        d.rounded_rectangle((x0, y0, x1, y1), radius=10, fill=paper)
        d.rectangle((x0, y0, x1, y0 + rng.randint(14, 22)), fill=_jit(header, rng))
        if photo:
            px = x0 + 8 if cls != 9 else x1 - 70
            d.rectangle((px, y0 + 30, px + 55, y0 + 100), fill=_jit((150, 130, 120), rng))
        for i in range(n_lines):
            lx = x0 + (75 if cls != 9 else 10)
            ly = y0 + 32 + i * 16
            d.rectangle((lx, ly, lx + rng.randint(40, 100), ly + 5), fill=(50, 50, 50))
        if cls == 9:  # machine-readable zone
            for i in range(2):
                d.rectangle((x0 + 8, y1 - 26 + i * 10, x1 - 8, y1 - 21 + i * 10), fill=(30, 30, 30))
        if stamp:
            d.ellipse((x1 - 45, y1 - 55, x1 - 10, y1 - 20), outline=(180, 40, 40), width=3)
        return im
    top = rng.randint(8, 22)
    d.rectangle((0, top, W, top + rng.randint(16, 28)), fill=_jit(header, rng))
    y = top + 40
    if photo:
        d.rectangle((W - 70, y, W - 15, y + 70), fill=_jit((150, 130, 120), rng))
    for _ in range(n_lines):
        width = rng.randint(60, 170 if not photo else 140)
        d.rectangle((15, y, 15 + width, y + 4), fill=(60, 60, 60))
        y += rng.randint(9, 13)
        if y > H - 40:
            break
    if table:
        rows, cols = table
        tx0, ty0 = 15, min(y + 8, H - 20 - rows * 14)
        tx1, ty1 = W - 15, ty0 + rows * 14
        for r in range(rows + 1):
            d.line((tx0, ty0 + r * 14, tx1, ty0 + r * 14), fill=(70, 70, 70), width=1)
        for c in range(cols + 1):
            x = tx0 + c * (tx1 - tx0) // cols
            d.line((x, ty0, x, ty1), fill=(70, 70, 70), width=1)
    if stamp:
        sx, sy = rng.randint(W - 90, W - 50), rng.randint(H - 90, H - 50)
        d.ellipse((sx, sy, sx + 40, sy + 40), outline=_jit((190, 40, 40), rng), width=3)
    return im


def _dashboard(rng: random.Random) -> Image.Image:
    im = Image.new("RGB", (W, H), tuple(int(rng.uniform(10, 50)) for _ in range(3)))
    d = ImageDraw.Draw(im)
    cy = rng.randint(120, 200)
    for cx in (rng.randint(50, 80), rng.randint(160, 190)):
        r = rng.randint(32, 45)
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(220, 220, 220), width=3)
        d.line((cx, cy, cx + rng.randint(-r, r), cy - rng.randint(0, r)), fill=(230, 60, 40), width=2)
    return im


def _plate(rng: random.Random) -> Image.Image:
    im = Image.new("RGB", (W, H), tuple(int(rng.uniform(70, 170)) for _ in range(3)))
    d = ImageDraw.Draw(im)
    y0 = rng.randint(110, 180)
    d.rectangle((20, y0, W - 20, y0 + 55), fill=(240, 240, 240), outline=(20, 20, 20), width=3)
    for i in range(7):
        x = 32 + i * 26
        d.rectangle((x, y0 + 12, x + 16, y0 + 42), fill=(20, 20, 20))
    return im


def _jit(color, rng: random.Random, amount: int = 25):
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in color)


def _photograph(im: Image.Image, rng: random.Random) -> Image.Image:
    """Label-independent nuisance: shift, scale, skew, brightness, clutter lines."""
    scale = rng.uniform(0.8, 1.05)
    w, h = int(W * scale), int(H * scale)
    page = im.resize((w, h), Image.BILINEAR).rotate(rng.uniform(-4, 4), expand=False, fillcolor=(200, 200, 200))
    canvas = Image.new("RGB", (W, H), tuple(int(rng.uniform(150, 230)) for _ in range(3)))
    canvas.paste(page, (rng.randint(min(0, W - w), max(0, W - w)), rng.randint(min(0, H - h), max(0, H - h))))
    d = ImageDraw.Draw(canvas)
    for _ in range(rng.randint(0, 6)):
        x, y = rng.randint(0, W), rng.randint(0, H)
        d.line((x, y, x + rng.randint(-60, 60), y + rng.randint(-60, 60)),
               fill=tuple(rng.randint(0, 255) for _ in range(3)), width=rng.randint(1, 3))
    gain = rng.uniform(0.75, 1.1)
    return canvas.point(lambda v: max(0, min(255, int(v * gain))))


#: How the demo's test set is shifted, in val_shift terms (cvtrain.shift_profile): the share of
#: pages turned by any angle, the brightness factor, the blur sigma (pixels of a 224-px image),
#: the noise std; plus the share of pages photographed at another aspect ratio.
TEST_SHIFT = {"rotate_any": 0.5, "brightness": 1.2, "blur": 1.0, "noise": 4.0}
OTHER_ASPECT_SHARE = 0.3
TEST_SHIFT_FILE = "test_shift.json"   # not part of the competition layout, like test_answers.csv


def _damage(im: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    """What the competition does to its test set: any-angle rotations for a share of the pages,
    other aspect ratios, brighter, blurrier, a little noise. Returns the image and what was applied
    (the per-image draws follow val_shift's: a strength times a factor uniform in [0.5, 1.5])."""
    applied = {}
    if rng.random() < OTHER_ASPECT_SHARE:
        stretch = rng.uniform(1.1, 1.4)
        im = im.resize((int(im.width * stretch), im.height), Image.BILINEAR)
        applied["aspect_stretch"] = round(stretch, 4)
    applied["angle"] = 0.0
    if rng.random() < TEST_SHIFT["rotate_any"]:
        applied["angle"] = round(rng.uniform(0, 360), 2)
        im = im.rotate(applied["angle"], resample=Image.BILINEAR, expand=True, fillcolor=(255, 255, 255))
    gain = 1 + (TEST_SHIFT["brightness"] - 1) * rng.uniform(0.5, 1.5)
    im = im.point(lambda v: max(0, min(255, round(v * gain))))
    # sigma in pixels of this image = sigma at 224 px scaled to the image's (geometric mean) side
    sigma224 = TEST_SHIFT["blur"] * rng.uniform(0.5, 1.5)
    im = im.filter(ImageFilter.GaussianBlur(sigma224 * (im.width * im.height) ** 0.5 / 224))
    std = TEST_SHIFT["noise"] * rng.uniform(0.5, 1.5)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, std, (im.height, im.width, 3))
    im = Image.fromarray(np.clip(np.asarray(im, dtype=np.float64) + noise, 0, 255).round().astype(np.uint8))
    applied.update(brightness=round(gain, 4), blur=round(sigma224, 4), noise=round(std, 4))
    return im, applied


def make_demo_data(out_dir: str | Path, per_class: int = 12, test_per_class: int = 4, seed: int = 0,
                   label_noise: float = 0.05) -> Path:
    """Write the demo dataset in the competition layout; returns ``out_dir``.

    ``label_noise`` flips that fraction of train labels to a random class, as
    real annotations have, so no config reaches a perfect score by memorising.
    """
    out = Path(out_dir)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with (out / "meta.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", "class_name"])
        w.writerows(enumerate(CLASS_NAMES))
    rows = []
    for cls in range(len(CLASS_NAMES)):
        for i in range(per_class):
            img_id = f"tr_{cls:02d}_{i:04d}_{rng.randrange(16**6):06x}.jpg"
            _photograph(_page(cls, rng), rng).save(out / "train" / img_id, "JPEG", quality=90)
            label = rng.randrange(len(CLASS_NAMES)) if rng.random() < label_noise else cls
            rows.append((img_id, label))
    rng.shuffle(rows)
    with (out / "train.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "target"])
        w.writerows(rows)
    test_rows, answers, applied = [], [], {}
    for cls in range(len(CLASS_NAMES)):
        for _ in range(test_per_class):
            img_id = f"{rng.randrange(16**16):016x}.jpg"
            im, applied[img_id] = _damage(_photograph(_page(cls, rng), rng), rng)
            im.save(out / "test" / img_id, "JPEG", quality=90)
            test_rows.append((img_id, 0))
            answers.append((img_id, cls))
    order = sorted(range(len(test_rows)), key=lambda j: test_rows[j][0])
    with (out / "sample_submission.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "target"])
        w.writerows(test_rows[j] for j in order)
    # Not part of the competition layout: lets the demo score its own submissions.
    with (out / "test_answers.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "target"])
        w.writerows(answers[j] for j in order)
    # What the generator did to each test image, for measuring `cvsweep shift` against the truth.
    (out / TEST_SHIFT_FILE).write_text(json.dumps({"profile": TEST_SHIFT, "applied": applied}, indent=1,
                                                  sort_keys=True))
    return out
