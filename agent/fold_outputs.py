"""What finalize's fold trials leave behind, read as arrays; and whether a trial's outputs are whole.

File names are those cvtrain.heldout and the engine write (not imported: reading them needs no torch).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .store import SQLiteStore, Sweep, Trial

#: variant -> the held-out predictions file: the submission's views, and no view.
OOF_FILES = {"tta": "val_predictions.csv", "single": "val_predictions_single.csv"}
#: Read when every fold trial wrote it: a shifted copy of the held-out fold (val_shift), same views.
OPTIONAL_OOF_FILES = {"shift": "val_shift_predictions.csv"}
TEST, HOLDOUT, HOLDOUT_SHIFT = "test_predictions.csv", "holdout_predictions.csv", "holdout_shift_predictions.csv"
#: Every test-time view's softmax (cvtrain.heldout.write_view_predictions), read for ``finalize --tta auto``.
VIEWS_FILE = "view_predictions.npz"
#: Each array of a views file and the array of IDs naming its rows (FoldOutputs names its ID lists alike).
VIEW_IDS = {"val": "val_ids", "val_shift": "val_ids", "test": "test_ids", "holdout": "holdout_ids",
            "holdout_shift": "holdout_ids"}


class OutputsError(ValueError):
    """A prediction file that is missing, partial or unreadable."""


@dataclass
class FoldOutputs:
    ids: list[str]                        # every out-of-fold image, sorted
    y: np.ndarray                         # (N,) true labels
    fold_of: np.ndarray                   # (N,) the fold that held each image out
    oof: dict[str, np.ndarray]            # variant -> (K finalists, N, C) softmax
    config: dict                          # one fold trial's saved configuration (config.yaml)
    class_names: list[str] | None = None
    test_ids: list[str] = field(default_factory=list)
    test: np.ndarray | None = None        # (K, T, C): each finalist's mean over its folds
    holdout_ids: list[str] = field(default_factory=list)
    holdout_y: np.ndarray | None = None
    holdout: np.ndarray | None = None     # (K, H, C): each finalist's mean over its folds
    holdout_shift: np.ndarray | None = None   # the same on the holdout's shifted copies (val_shift)
    #: read with views: "names" (V view names), "val", "shift" (K, V, N, C), "test" (K, V, T, C) and
    #: "holdout" (K, V, H, C) (test and holdout: means over folds), each where every fold trial has it
    views: dict | None = None


def read_probs(path: Path) -> tuple[list[tuple], np.ndarray]:
    """(key columns per row, probabilities (rows, C)) of a predictions CSV; OutputsError if it is not whole."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        head, body = rows[0], rows[1:]
        k = sum(1 for h in head if not h.startswith("p"))
        if not body or any(len(r) != len(head) for r in body):
            raise OutputsError(f"{path}: {len(body)} row(s), some not of {len(head)} columns (a partial file?)")
        probs = np.array([[float(v) for v in r[k:]] for r in body], dtype=np.float64)
    except (OSError, IndexError, ValueError) as exc:
        raise OutputsError(exc if isinstance(exc, OutputsError) else f"{path}: {exc}") from None
    if not np.isfinite(probs).all():
        raise OutputsError(f"{path}: non-finite probabilities")
    return [tuple(r[:k]) for r in body], probs


def expected_test_rows(cfg: dict) -> int | None:
    """Rows the test predictions must have (sample_submission's), None when the data has no test set."""
    sub = Path(cfg.get("data_dir") or "-") / (cfg.get("sample_submission") or "sample_submission.csv")
    if not sub.is_file():
        return None
    with sub.open(newline="") as f:
        return max(0, sum(1 for _ in csv.reader(f)) - 1)


def read_views(path: Path, cfg: dict) -> dict[str, np.ndarray]:
    """A fold trial's view_predictions.npz as arrays; OutputsError when it is missing or not whole."""
    try:
        with np.load(path, allow_pickle=False) as z:
            got = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise OutputsError(f"{path}: {exc}") from None
    need = ["views", "val_ids", "val_y", "val"] + (["test_ids", "test"] if expected_test_rows(cfg) is not None else [])
    need += ["holdout_ids", "holdout_y", "holdout"] if float(cfg.get("holdout") or 0) > 0 else []
    lacking = [k for k in need if k not in got]
    if lacking:
        raise OutputsError(f"{path}: no {', '.join(lacking)} (a file from an older trainer?)")
    n_views = len(got["views"])
    for k, ids in VIEW_IDS.items():
        if k in got and (got[k].ndim != 3 or len(got[k]) != n_views or got[k].shape[1] != len(got[ids])
                         or not np.isfinite(got[k]).all()):
            raise OutputsError(f"{path}: {k} is not (views, {len(got[ids])} images, classes) of finite probabilities")
    return got


def read_trial(out: Path, views: bool = False) -> dict:
    """Everything one finished fold trial wrote: {"config", variant files, "test", "holdout"} and, with
    ``views``, "views" (:func:`read_views`); OutputsError."""
    if not (out / "config.yaml").is_file():
        raise OutputsError(f"{out / 'config.yaml'} is missing")
    cfg = yaml.safe_load((out / "config.yaml").read_text()) or {}
    got: dict = {"config": cfg}
    for variant, name in OOF_FILES.items():
        got[variant] = read_probs(out / name)
    for variant, name in OPTIONAL_OOF_FILES.items():
        if (out / name).is_file():
            got[variant] = read_probs(out / name)
    want = expected_test_rows(cfg)
    if want is not None:
        got["test"] = read_probs(out / TEST)
        if len(got["test"][0]) != want:
            raise OutputsError(f"{out / TEST}: {len(got['test'][0])} rows, the test set has {want}")
    if float(cfg.get("holdout") or 0) > 0:
        got["holdout"] = read_probs(out / HOLDOUT)
        if (out / HOLDOUT_SHIFT).is_file():
            got["holdout_shift"] = read_probs(out / HOLDOUT_SHIFT)
    if views:
        got["views"] = read_views(out / VIEWS_FILE, cfg)
    if (out / "confusion_matrix.json").is_file():
        got["class_names"] = json.loads((out / "confusion_matrix.json").read_text()).get("class_names")
    return got


def incomplete(trial: Trial, views: bool = False) -> str | None:
    """Why a finished fold trial's outputs cannot be used (then it must run again), or None."""
    try:
        read_trial(Path(trial.output_dir or "-"), views)
    except OutputsError as exc:
        return str(exc)
    return None


def _by_id(keys: list[tuple], probs: np.ndarray) -> dict[str, tuple[int, np.ndarray]]:
    return {k[0]: (int(k[1]), p) for k, p in zip(keys, probs)}


def read_folds(store: SQLiteStore, final: Sweep, candidates: list[dict],
               views: bool = False) -> tuple[FoldOutputs, list[str]]:
    """The fold trials of ``candidates`` (in finalist order) as arrays, and what is missing (then no arrays);
    ``views``: with every view's softmax (FoldOutputs.views)."""
    keys = [json.dumps(c, sort_keys=True) for c in candidates]
    per: list[list[tuple[int, dict]]] = [[] for _ in candidates]
    missing = []
    for t in store.list_trials(final.id, with_history=False):
        key = json.dumps(t.params.get("candidate"), sort_keys=True)
        if key not in keys:
            continue
        try:
            if t.state != "finished":
                raise OutputsError(t.state + (": " + t.error.splitlines()[0] if t.error else ""))
            per[keys.index(key)].append((int(t.params["fold"]), read_trial(Path(t.output_dir or "-"), views)))
        except OutputsError as exc:
            missing.append(f"{t.name} ({exc})")
    return (None if missing else _assemble(per)), missing


def _assemble(per: list[list[tuple[int, dict]]]) -> FoldOutputs:
    """Stack the finalists' folds; every finalist must hold out every image once, on the same folds."""
    first = per[0][0][1]
    truth, fold_of, oof = {}, {}, {v: [] for v in OOF_FILES}
    shift_everywhere = all("shift" in got for trials in per for _, got in trials)
    if shift_everywhere:
        oof["shift"] = []
    for trials in per:
        held = {v: {} for v in oof}
        for fold, got in trials:
            for v in oof:
                for img, (label, p) in _by_id(*got[v]).items():
                    if img in held[v]:
                        raise OutputsError(f"{img} is held out by two folds of one finalist: the folds overlap")
                    held[v][img] = p
                    truth[img] = label
                    fold_of.setdefault(img, fold)
                    if fold_of[img] != fold:
                        raise OutputsError(f"{img}: the finalists' folds differ (fold {fold_of[img]} and {fold})")
        for v, h in held.items():
            oof[v].append(h)
    ids = sorted(truth)
    if any(sorted(h) != ids for hs in oof.values() for h in hs):
        raise OutputsError("the finalists' folds do not hold out every image exactly once")
    out = FoldOutputs(ids, np.array([truth[i] for i in ids]), np.array([fold_of[i] for i in ids]),
                      {v: np.stack([np.stack([h[i] for i in ids]) for h in hs]) for v, hs in oof.items()},
                      first["config"], first.get("class_names"))
    _stack_test_and_holdout(out, per)
    if all("views" in got for trials in per for _, got in trials):
        out.views = _stack_views(out, per)
    return out


def _mean_over_folds(per: list[list[tuple[int, dict]]], key: str) -> np.ndarray:
    """(K, rows, C): each finalist's ``key`` predictions averaged over its fold trials."""
    return np.stack([np.mean([got[key][1] for _, got in trials], axis=0) for trials in per])


def _stack_test_and_holdout(out: FoldOutputs, per: list[list[tuple[int, dict]]]) -> None:
    def everywhere(key: str) -> bool:
        return all(key in got for trials in per for _, got in trials)

    if everywhere("test"):
        out.test_ids = [k[0] for k in per[0][0][1]["test"][0]]
        if any([k[0] for k in got["test"][0]] != out.test_ids for trials in per for _, got in trials):
            raise OutputsError("the fold trials' test predictions are not in one order")
        out.test = _mean_over_folds(per, "test")
    if everywhere("holdout"):
        keys = per[0][0][1]["holdout"][0]
        out.holdout_ids, out.holdout_y = [k[0] for k in keys], np.array([int(k[1]) for k in keys])
        for key in ("holdout", "holdout_shift") if everywhere("holdout_shift") else ("holdout",):
            if any(got[key][0] != keys for trials in per for _, got in trials):
                raise OutputsError(f"the fold trials held out different holdout images ({key}_predictions.csv)")
            setattr(out, key, _mean_over_folds(per, key))


def _stack_views(out: FoldOutputs, per: list[list[tuple[int, dict]]]) -> dict:
    """Every view's softmax, in the order of ``out`` (images sorted by ID; test and holdout as stacked)."""
    names = [str(v) for v in per[0][0][1]["views"]["views"]]
    zs = [[got["views"] for _, got in trials] for trials in per]
    if any([str(v) for v in z["views"]] != names for trials in zs for z in trials):
        raise OutputsError("the fold trials predicted different test-time views")
    pos = {img: i for i, img in enumerate(out.ids)}
    views: dict = {"names": names}
    for key, name in (("val", "val"), ("val_shift", "shift")):
        if not all(key in z for trials in zs for z in trials):
            continue
        arr = np.zeros((len(per), len(names), len(out.ids), next(iter(out.oof.values())).shape[2]))
        for k, trials in enumerate(zs):
            filled = np.zeros(len(out.ids), dtype=bool)
            for z in trials:
                rows = [pos.get(str(i), -1) for i in z["val_ids"]]
                if min(rows, default=0) < 0:
                    raise OutputsError("view_predictions.npz holds out images the CSV files do not")
                arr[k][:, rows] = z[key]
                filled[rows] = True
            if not filled.all():
                raise OutputsError("the fold trials' view_predictions.npz do not hold out every image")
        views[name] = arr
    for key in ("test", "holdout", "holdout_shift"):
        ids = getattr(out, VIEW_IDS[key])
        if ids and all(key in z for trials in zs for z in trials):
            if any([str(i) for i in z[VIEW_IDS[key]]] != list(ids) for trials in zs for z in trials):
                raise OutputsError(f"view_predictions.npz: the {key} images differ from {key}_predictions.csv's")
            views[key] = np.stack([np.mean([z[key] for z in trials], axis=0) for trials in zs])
    return views
