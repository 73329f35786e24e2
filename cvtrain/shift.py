"""Measure how the test images differ from the training images, and the profile that closes the gap.

``measure_shift(data_dir)`` samples up to ``max_images`` training and test images
(seeded), reads them through the decoded cache (stretched squares of ``size`` px, so
padding never enters a figure; the aspect ratio comes from each file's header),
computes :mod:`cvtrain.shift_stats` per image and summarises them: overall for both
sides and per class for the training images.

The profile (the recommended ``val_shift``) is fitted by simulation: the val_shift
transforms are applied to the training sample with fixed per-image draws, and each
strength is searched (bisection; every statistic is monotone in its strength) until
the transformed training statistics match the test's: first the share of rotated
images (the excess of the test's not-upright share over the training's, divided by
the detector's rate on turned pages, measured by turning the training sample), then
brightness (mean), contrast (std), then blur (Laplacian variance) and noise
(Immerkaer's estimate), alternating twice since each moves the other's statistic.
JPEG quality and downscaling are not estimated (left off).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import data as D
from . import shift_profile as SP
from . import shift_stats as S
from . import valshift as V
from .config import DataConfig
from .shift_profile import ShiftError

MEASURE_SIZE = SP.BLUR_REFERENCE_SIZE
FIT_IMAGES = 64     # the profile fit simulates on this many training images (enough for medians)
FIT_SEED = 12345


def _sample(paths: list[str], n: int, seed: int) -> np.ndarray:
    if len(paths) <= n:
        return np.arange(len(paths))
    return np.sort(np.random.default_rng(seed).choice(len(paths), n, replace=False))


def test_paths(root: Path, test_dir: str) -> list[str]:
    folder = root / test_dir
    if not folder.is_dir():
        raise ShiftError(f"{folder}: no test folder; the shift compares training with test images "
                         f"(set the folder with --test-dir)")
    paths = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in D.IMAGE_EXTS)
    if not paths:
        raise ShiftError(f"{folder}: the test folder holds no images ({', '.join(D.IMAGE_EXTS)})")
    return paths


def _read(paths: list[str], size: int, cache_dir) -> tuple[torch.Tensor, np.ndarray]:
    """(uint8 (N, 3, size, size) stretched, (N, 2) original width, height); raises naming unreadable files."""
    sizes, bad = [], {}
    for p in paths:
        try:
            with Image.open(p) as im:  # the header only: no decoding
                sizes.append(im.size)
        except Exception as exc:  # noqa: BLE001 - every unreadable file is named, whatever the reason
            bad[p] = type(exc).__name__
            sizes.append((1, 1))
    if not bad:  # decoding an unreadable file into the shared cache would only repeat the errors
        decoded = D.load_or_build_cache(paths, size, "stretch", cache_dir, progress=False)
        bad.update((b.split(": ", 1)[0], b.split(": ")[1]) for b in decoded.bad)
    if bad:
        named = ", ".join(f"{p} ({why})" for p, why in bad.items())
        raise ShiftError(f"{len(bad)} image(s) could not be decoded: {named}; fix or remove them")
    x = torch.from_numpy(np.array(decoded.array)).permute(0, 3, 1, 2).contiguous()
    return x, np.asarray(sizes, dtype=np.float64)


def measure_shift(data_dir: str | Path, max_images: int = 200, seed: int = 0, size: int = MEASURE_SIZE,
                  cache_dir: str | None = None, test_dir: str = "test") -> dict:
    """{'train': {...figures, 'per_class': {...}, 'profile': {...}}, 'test': {...figures, 'profile': {...}}}."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ShiftError(f"{root}: no such data directory")
    tpaths = test_paths(root, test_dir)
    try:
        index = D.load_index(DataConfig(data_dir=str(root)))
    except D.DataError as exc:
        raise ShiftError(str(exc).splitlines()[0]) from None
    tr = _sample(index.paths, max_images, seed)
    te = _sample(tpaths, max_images, seed + 1)
    x_tr, sz_tr = _read([index.paths[i] for i in tr], size, cache_dir)
    x_te, sz_te = _read([tpaths[i] for i in te], size, cache_dir)
    st_tr, st_te = S.image_stats(x_tr, sz_tr), S.image_stats(x_te, sz_te)
    train = S.summarize(st_tr, sz_tr[:, 0] / sz_tr[:, 1])
    test = S.summarize(st_te, sz_te[:, 0] / sz_te[:, 1])
    labels = np.asarray(index.labels)[tr]
    train["per_class"] = {
        index.class_names[c]: S.summarize({k: v[labels == c] for k, v in st_tr.items()},
                                          (sz_tr[:, 0] / sz_tr[:, 1])[labels == c])
        for c in sorted(set(labels.tolist()))}
    profile = fit_profile(x_tr, sz_tr, train, test)
    train["profile"] = profile
    test["profile"] = profile
    return {"train": train, "test": test, "data_dir": str(root), "max_images": max_images, "size": size}


def shift_table(result: dict) -> list[tuple]:
    """Rows for a side-by-side table: train, test, then each training class."""
    keys = ("n_images", "brightness_mean", "contrast_mean", "laplacian_var_median", "noise_median",
            "aspect_ratio_median", "not_upright_share")
    head = ("set", "images", "brightness", "contrast", "laplacian_var", "noise", "aspect", "not_upright")

    def row(name: str, r: dict) -> tuple:
        return (name, *(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys))

    rows = [head, row("train", result["train"]), row("test", result["test"])]
    rows += [row(f"  train/{c}", r) for c, r in result["train"].get("per_class", {}).items()]
    return rows


def _bisect(fn, lo: float, hi: float, target: float, increasing: bool, steps: int = 8, log: bool = False) -> float:
    """The strength in [lo, hi] where the monotone ``fn`` meets ``target`` (an end when it never does)."""
    def mid(a, b):
        return float(np.sqrt(a * b)) if log else (a + b) / 2

    a, b = lo, hi
    for _ in range(steps):
        m = mid(a, b)
        if (fn(m) < target) == increasing:
            a = m
        else:
            b = m
    return mid(a, b)


def _stat(name: str, x: torch.Tensor) -> np.ndarray:
    """One statistic of :func:`cvtrain.shift_stats.image_stats` (the fit needs one at a time)."""
    g = S.gray(x).flatten(1)
    if name == "brightness":
        return g.mean(1).numpy()
    if name == "contrast":
        return g.std(1).numpy()
    return S.image_stats(x)[name]


def fit_profile(x: torch.Tensor, sizes: np.ndarray, train: dict, test: dict) -> dict[str, float]:
    """The val_shift strengths that move the training sample's statistics to the test's."""
    n = min(FIT_IMAGES, len(x))
    x, sizes = x[:n], sizes[:n]
    ids = [str(i) for i in range(n)]

    def shifted(p: dict) -> torch.Tensor:
        return V.apply(x, V.draw(p, ids, FIT_SEED, x.shape[-1]), noise_per_image=False)

    def upright_share(p: dict) -> float:
        d = V.draw(p, ids, FIT_SEED, x.shape[-1])
        sz = sizes.copy()
        sz[d.rotate.numpy()] = x.shape[-1]  # a rotated copy is a square canvas: no un-stretching
        return float(np.mean(S.image_stats(V.apply(x, d, noise_per_image=False), sz)["not_upright"]))

    def median_of(name: str, p: dict, key: str):
        return lambda v: float(np.median(_stat(name, shifted({**p, key: v}))))

    def mean_of(name: str, p: dict, key: str):
        return lambda v: float(np.mean(_stat(name, shifted({**p, key: v}))))

    p: dict[str, float] = {}
    # The detector's rate on turned pages that read upright unturned, from the fit subset; the
    # shares from the whole samples (a subset's share of dashboards is noisy).
    s_sub, detect = upright_share({}), upright_share({"rotate_any": 1.0})
    rate = (detect - s_sub) / max(1e-9, 1 - s_sub)
    if rate > 0.05:
        s_train = train["not_upright_share"]
        p["rotate_any"] = float(np.clip((test["not_upright_share"] - s_train) / ((1 - s_train) * rate), 0, 1))
    p["brightness"] = _bisect(mean_of("brightness", p, "brightness"), 0.2, 5.0, test["brightness_mean"],
                              increasing=True, log=True)
    p["contrast"] = _bisect(mean_of("contrast", p, "contrast"), 0.2, 5.0, test["contrast_mean"],
                            increasing=True, log=True)
    p["noise"] = 0.0
    # blur, noise, blur again: noise raises the Laplacian variance that blur lowers
    p["blur"] = _bisect(median_of("laplacian_var", p, "blur"), 0.0, 8.0, test["laplacian_var_median"], False)
    p["noise"] = _bisect(median_of("noise", p, "noise"), 0.0, 64.0, test["noise_median"], True)
    p["blur"] = _bisect(median_of("laplacian_var", p, "blur"), 0.0, 8.0, test["laplacian_var_median"], False)
    out = {k: round(v, 3) for k, v in p.items()}
    return SP.check_profile({k: v for k, v in out.items() if v != SP.RANGES[k][2]}, "cvsweep shift")
