"""Datasets, splits and the decoded-image cache (the per-sample augmentations: :mod:`cvtrain.sample_augment`).

Images are decoded and resized once per (dataset content, size, resize mode)
into a uint8 ``.npy`` array on disk, opened memory-mapped. Later epochs, later
trials and other processes on the machine read the same pages from the OS page
cache, so the cache is resident once per machine, not once per worker.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .config import AugmentConfig, DataConfig
from .folds import kfold, shuffle_split, stratified_kfold
from .sample_augment import augment
from .transforms import PAD_FILL

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CACHE_VERSION = 1


class DataError(ValueError):
    """The data on disk is not what the trainer needs; the message says what and how to fix it."""


@dataclass
class DatasetIndex:
    paths: list[str]
    labels: list[int]
    class_names: list[str]
    root: str
    ids: list[str] | None = None   # train.csv IDs (competition layout); None: relative paths

    def image_ids(self) -> list[str]:
        return self.ids if self.ids is not None else [os.path.relpath(p, self.root) for p in self.paths]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def absent_classes(self) -> list[str]:
        """Listed classes (meta.csv) with no image in the data: a model cannot learn them."""
        present = set(self.labels)
        return [c for i, c in enumerate(self.class_names) if i not in present]


# ---------------------------------------------------------------------------
# Discovering the data
# ---------------------------------------------------------------------------
def load_index(cfg: DataConfig) -> DatasetIndex:
    """Read the competition layout (train.csv + meta.csv + train/) or an ImageFolder tree."""
    root = Path(cfg.data_dir)
    if not root.is_dir():
        raise DataError(f"data_dir={str(root)!r} does not exist. Make demo data with `cvsweep demo-data {root}` "
                        "or point --data_dir at your dataset.")
    if (root / cfg.train_csv).is_file():
        return _competition_index(root, cfg)
    folder = root / cfg.image_dir if (root / cfg.image_dir).is_dir() else root
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: found neither {cfg.train_csv} (competition layout) nor class folders "
                        f"(ImageFolder layout) in {folder}")
    paths, labels = [], []
    for i, c in enumerate(classes):
        for p in sorted((folder / c).iterdir()):
            if p.suffix.lower() in IMAGE_EXTS:
                paths.append(str(p))
                labels.append(i)
    if not paths:
        raise DataError(f"{folder}: class folders hold no images ({', '.join(IMAGE_EXTS)})")
    return DatasetIndex(paths, labels, classes, str(root))


def read_class_names(root: Path, meta_csv: str) -> dict[int, str]:
    meta = root / meta_csv
    if not meta.is_file():
        return {}
    with meta.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"target", "class_name"} <= set(rows[0]):
        raise DataError(f"{meta}: expected columns target,class_name; found {','.join(rows[0])}")
    return {int(r["target"]): r["class_name"] for r in rows}


def _competition_index(root: Path, cfg: DataConfig) -> DatasetIndex:
    csv_path = root / cfg.train_csv
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"ID", "target"} <= set(reader.fieldnames):
            raise DataError(f"{csv_path}: expected columns ID,target; found {','.join(reader.fieldnames or [])}")
        rows = list(reader)
    names = read_class_names(root, cfg.meta_csv)
    img_dir = root / cfg.image_dir
    paths, labels, ids = [], [], []
    problems = check_ids(csv_path, [r["ID"] for r in rows], unique=True)
    for n, r in enumerate(rows, start=2):
        try:
            labels.append(int(r["target"]))
        except ValueError:
            problems.append(f"{csv_path}:{n}: target {r['target']!r} is not an integer")
            continue
        paths.append(str(resolve_image(img_dir, r["ID"])))
        ids.append(r["ID"])
    if problems:
        raise DataError("\n".join(problems))
    n_classes = max(max(labels) + 1, max(names) + 1 if names else 0)
    class_names = [names.get(i, str(i)) for i in range(n_classes)]
    return DatasetIndex(paths, labels, class_names, str(root), ids)


def check_ids(csv_path: Path, ids: list[str], unique: bool) -> list[str]:
    """One line per ID that would read outside the image folder (absolute, or with a ``..`` part), and,
    when ``unique``, per ID listed twice; rows counted as in an editor (the header is row 1)."""
    problems, rows_of = [], {}
    for n, image_id in enumerate(ids, start=2):
        parts = Path(image_id).parts
        if not image_id or Path(image_id).is_absolute() or ".." in parts:
            problems.append(f"{csv_path}:{n}: ID {image_id!r} is not a file name under the image folder "
                            "(empty, absolute or with '..'); IDs name images inside data_dir")
        rows_of.setdefault(image_id, []).append(n)
    if unique:
        problems += [f"{csv_path}: ID {i!r} is listed {len(r)} times (rows {', '.join(map(str, r))}); "
                     "each image once" for i, r in rows_of.items() if len(r) > 1]
    return problems


def resolve_image(img_dir: Path, image_id: str) -> Path:
    """IDs may carry their extension (``abc.jpg``) or not (``abc``)."""
    p = img_dir / image_id
    if p.suffix.lower() in IMAGE_EXTS or p.exists():
        return p
    for ext in IMAGE_EXTS:
        if (img_dir / (image_id + ext)).exists():
            return img_dir / (image_id + ext)
    return p


# ---------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------
def split_indices(labels: list[int], cfg: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (stratified) train/val split, or the train/val indices of fold ``cfg.fold``.

    ``cfg.split_seed``, when set, seeds the split instead of ``seed``: runs with other
    seeds then share their folds (finalize's out-of-fold estimates need that). The
    ``cfg.holdout`` slice is in neither part. Folds are stratified whenever every class has
    at least 2 images (:func:`folds_stratified`); a class with fewer images than folds is
    spread over as many folds as it has images, and named in a warning.
    """
    seed = seed if cfg.split_seed is None else cfg.split_seed
    pool, _ = holdout_indices(labels, cfg)
    y = np.asarray(labels)[pool]
    counts = np.bincount(y)
    if cfg.folds >= 2:
        for c, n in small_classes(y, cfg.folds).items():
            log.warning("class %d has %d image(s), fewer than the %d folds: %d fold(s) validate none of it",
                        c, n, cfg.folds, cfg.folds - n)
        if folds_stratified(y, cfg):
            tr, va = stratified_kfold(y, cfg.folds, cfg.fold, seed)
        else:
            tr, va = kfold(len(y), cfg.folds, cfg.fold, seed)
        return np.sort(pool[tr]), np.sort(pool[va])
    n_val = max(1, int(round(cfg.val_fraction * len(y))))
    strat = y if _can_stratify(counts) and cfg.stratify and n_val >= (counts > 0).sum() else None
    tr, va = shuffle_split(len(y), n_val, seed, strat)
    return np.sort(pool[tr]), np.sort(pool[va])


def _can_stratify(counts: np.ndarray) -> bool:
    return bool(counts[counts > 0].min() >= 2) if counts.any() else False


def folds_stratified(labels, cfg: DataConfig) -> bool:
    """Whether ``cfg.folds`` folds of these labels are stratified: asked for, and every class has >= 2
    images (refused only when every class is smaller than the number of folds, as scikit-learn does)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    return bool(cfg.stratify and _can_stratify(counts) and counts.max() >= cfg.folds)


def small_classes(labels, folds: int) -> dict[int, int]:
    """Classes with fewer images than folds (and at least one): class -> images."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    return {c: int(n) for c, n in enumerate(counts) if 0 < n < folds}


def holdout_indices(labels, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(the rest, the holdout): a stratified ``cfg.holdout`` slice seeded by ``cfg.holdout_seed`` alone,
    so every trial of a sweep leaves out the same images whatever its seed or folds."""

    idx = np.arange(len(labels))
    if cfg.holdout <= 0:
        return idx, idx[:0]
    y = np.asarray(labels)
    counts = np.bincount(y)
    n_hold = max(1, int(round(cfg.holdout * len(y))))
    strat = y if _can_stratify(counts) and n_hold >= (counts > 0).sum() else None
    rest, held = shuffle_split(len(y), n_hold, cfg.holdout_seed, strat)
    return np.sort(rest), np.sort(held)


# ---------------------------------------------------------------------------
# Decoding and the cache
# ---------------------------------------------------------------------------
def decode_image(path: str, size: int, resize: str = "pad") -> np.ndarray:
    """Decode one image to an RGB uint8 array of shape (size, size, 3)."""
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))  # decode at reduced scale: ~2.5x faster on document JPEGs
        im = ImageOps.exif_transpose(im).convert("RGB")
        if resize == "stretch":
            im = im.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
        else:
            im = ImageOps.pad(im, (size, size), Image.BILINEAR, color=(PAD_FILL,) * 3)
        return np.asarray(im, dtype=np.uint8)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cvtrain"


def cache_key(paths: list[str], size: int, resize: str) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}|{size}|{resize}".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{os.path.abspath(p)}|missing\n".encode())
    return h.hexdigest()[:20]


@dataclass
class DecodedImages:
    array: np.ndarray      # (N, size, size, 3) uint8, memory-mapped
    bad: list[str]         # paths that could not be decoded (rows are white)
    path: Path


def load_or_build_cache(paths: list[str], size: int, resize: str, cache_dir: str | os.PathLike | None,
                        progress: bool = True, workers: int | None = None) -> DecodedImages:
    """Return the decoded images, building the cache file once if it is missing.

    Safe across processes: the first to arrive builds under a file lock, the
    rest wait and then open the same file.
    """
    cdir = Path(cache_dir) if cache_dir else default_cache_dir()
    cdir.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, size, resize)
    npy, meta = cdir / f"{key}.npy", cdir / f"{key}.json"
    with open(cdir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (npy.exists() and meta.exists()):
                _build_cache(paths, size, resize, npy, meta, progress, workers)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    bad = json.loads(meta.read_text())["bad"]
    return DecodedImages(np.load(npy, mmap_mode="r"), bad, npy)


def _build_cache(paths, size, resize, npy: Path, meta: Path, progress: bool, workers: int | None) -> None:
    tmp = npy.with_name(npy.stem + f".tmp{os.getpid()}.npy")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
    bad: list[str] = []

    def work(i: int):
        try:
            arr[i] = decode_image(paths[i], size, resize)
            return None
        except Exception as exc:  # noqa: BLE001 - every unreadable file is reported, whatever the reason
            arr[i] = PAD_FILL
            return f"{paths[i]}: {type(exc).__name__}: {exc}"

    workers = workers or min(8, os.cpu_count() or 1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            it = pool.map(work, range(len(paths)), chunksize=16)
            for err in tqdm(it, total=len(paths), desc=f"decoding images to cache ({size}px)",
                            disable=not progress, unit="img", leave=False):
                if err:
                    bad.append(err)
        arr.flush()
        os.replace(tmp, npy)
    finally:
        if tmp.exists():
            tmp.unlink()
    tmp_meta = meta.with_suffix(f".tmp{os.getpid()}")
    tmp_meta.write_text(json.dumps({"n": len(paths), "size": size, "resize": resize, "bad": bad}))
    os.replace(tmp_meta, meta)


def check_bad_images(bad: list[str], skip: bool, what: str = "image(s)") -> set[str]:
    """Raise naming every bad file, or warn and return the paths to skip."""
    if not bad:
        return set()
    if not skip:
        listing = "\n  ".join(bad)
        raise DataError(f"{len(bad)} {what.split(' (')[0]} could not be read:\n  {listing}\n"
                        "Fix or remove them, or pass --skip_bad_images=True to go on without them.")
    warnings.warn(f"skipping {len(bad)} unreadable {what}: " + "; ".join(bad), stacklevel=2)
    return {b.split(": ", 1)[0] for b in bad}


class CachedImageDataset(torch.utils.data.Dataset):
    """Items are (uint8 CHW tensor, label); normalisation happens on the device, per batch.

    ``ds[list_of_positions]`` answers a whole batch, (uint8 NCHW, int64 labels), with one
    fancy-index of the memory-mapped cache: the loader's only work when augmentation runs on
    the device (``aug=None``). With ``aug`` set (``augment_on=cpu``), each sample is augmented
    here, one at a time, with its own generator seeded by (seed, epoch, image).
    """
    def __init__(self, images: np.ndarray, labels, indices, aug: AugmentConfig | None = None, seed: int = 0):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.aug = aug
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if not isinstance(i, (int, np.integer)):
            return self.batch(i)
        j = int(self.indices[i])
        img = torch.from_numpy(np.array(self.images[j])).permute(2, 0, 1)
        if self.aug is not None:
            g = torch.Generator().manual_seed(hash((self.seed, self.epoch, j)) & 0x7FFFFFFF)
            img = augment(img, self.aug, g)
        return img.contiguous(), int(self.labels[j])

    def batch(self, positions) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 (N, 3, H, W), int64 (N,)) for these positions; NCHW is a view of the cache's NHWC rows."""
        js = self.indices[np.asarray(positions, dtype=np.int64)]
        labels = torch.from_numpy(self.labels[js])
        if self.aug is not None:
            return torch.stack([self[int(p)][0] for p in positions]), labels
        return torch.from_numpy(np.ascontiguousarray(self.images[js])).permute(0, 3, 1, 2), labels
