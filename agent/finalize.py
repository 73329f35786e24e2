"""From a sweep to a submission: ``cvsweep finalize``.

1. The top K distinct configurations of a sweep's leaderboard (stopped trials
   count with their real metric) become the *finalists*.
2. Each is retrained on N stratified folds of all the training data, as a
   generated grid sweep over (candidate, fold) on the local controller: the same
   launcher, workers, leases and resume as any sweep. Every fold trial writes its
   final epoch's softmax on its held-out fold (``val_predictions.csv``) and on the
   test set with the test-time views (``test_predictions.csv``).
3. Out-of-fold macro-F1 per finalist and for the ensemble comes from held-out
   predictions only; the submission is the ensemble's argmax (softmax averaged
   over folds and finalists), in ``sample_submission.csv`` order.

The final epoch's model is used, never the fold's best epoch: choosing the epoch
on the held-out fold would make the out-of-fold estimate optimistic.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .queries import leaderboard
from .store import RunStore, SQLiteStore, Sweep


class FinalizeError(RuntimeError):
    pass


@dataclass
class Finalist:
    index: int                 # 1-based, in leaderboard order
    run: str                   # the parent sweep's trial it comes from
    run_id: str | None
    metric: float              # the parent sweep's metric for it
    params: dict


@dataclass
class FinalResult:
    parent: str
    final_sweep: str
    folds: int
    finalists: list[dict]                  # index, run, metric, params, oof_macro_f1, fold_f1
    oof_macro_f1: float                    # the ensemble's
    confusion: list                        # the ensemble's out-of-fold confusion matrix
    class_names: list[str]
    n_images: int
    test_ids: list[str] = field(default_factory=list)
    test_probs: np.ndarray | None = None
    data_dir: str | None = None            # as the fold trials resolved it (their config.yaml)
    sample_submission: str = "sample_submission.csv"

    def to_json(self) -> dict:
        return {"parent": self.parent, "final_sweep": self.final_sweep, "folds": self.folds,
                "finalists": self.finalists, "oof_macro_f1": self.oof_macro_f1, "confusion": self.confusion,
                "class_names": self.class_names, "n_images": self.n_images, "created_at": time.time()}


def select_finalists(store: RunStore, sweep_id: str, top: int) -> list[Finalist]:
    """The ``top`` best distinct configurations of the sweep, best first."""
    if top < 1:
        raise FinalizeError(f"--top {top}: take at least one configuration")
    out: list[Finalist] = []
    seen: set[str] = set()
    for r in leaderboard(store, sweep_id):
        key = json.dumps(r["config"], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        out.append(Finalist(len(out) + 1, r["run"], r.get("run_id"), r["metric"], r["config"]))
        if len(out) == top:
            break
    if not out:
        raise FinalizeError(f"sweep {sweep_id} has no trial with a finite metric to finalize yet; "
                            f"run `cvsweep agent {sweep_id}` first (or see `cvsweep runs {sweep_id} --state failed`)")
    return out


def finalize_config(parent: Sweep, finalists: list[Finalist], folds: int, tta: list[str] | None = None,
                    split_seed: int = 0) -> dict:
    """The generated grid sweep over (candidate, fold); every fold trial saves its predictions."""
    if folds < 2:
        raise FinalizeError(f"--folds {folds}: out-of-fold estimates need at least 2 folds")
    params: dict = {
        "candidate": {"values": [f.params for f in finalists]},
        "fold": {"values": list(range(folds))},
        "folds": {"value": folds},
        "split_seed": {"value": split_seed},
        "save_predictions": {"value": True},
        "parent_sweep": {"value": parent.id},
    }
    if tta:
        params["tta"] = {"value": list(tta)}
    return {"name": f"{parent.name or parent.id}-final",
            "description": f"finalize {parent.id}: top {len(finalists)} configurations x {folds} folds",
            "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"}, "parameters": params}


def find_or_create_final_sweep(store: SQLiteStore, parent: Sweep, config: dict) -> tuple[Sweep, bool]:
    """The finalize sweep with exactly this config (resumed: its ended folds stay), else a new one."""
    from .controller import LocalController

    for s in reversed(store.list_sweeps()):
        if s.config == config and s.state != "cancelled":
            # A grid never suggests a point again: a fold that failed or crashed is queued once more
            # (it resumes from its last checkpoint when it has one).
            with store.transaction() as c:
                c.execute("UPDATE trials SET state='pending', attempts=0, worker=NULL, error=NULL "
                          "WHERE sweep_id=? AND state IN ('failed', 'crashed')", (s.id,))
            if s.state == "finished":
                store.set_sweep_state(s.id, "running")
            return s, True
    return LocalController(store).create_sweep(config, project=parent.project, entity=parent.entity), False


def _read_probs(path: Path) -> tuple[list[tuple], np.ndarray]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    head, body = rows[0], rows[1:]
    k = sum(1 for h in head if not h.startswith("p"))
    keys = [tuple(r[:k]) for r in body]
    probs = np.array([[float(v) for v in r[k:]] for r in body], dtype=np.float64).reshape(len(body), -1)
    return keys, probs


def collect(store: SQLiteStore, final: Sweep, finalists: list[Finalist], folds: int) -> FinalResult:
    """Read every fold's predictions; out-of-fold macro-F1 per finalist and for the ensemble."""
    from cvtrain.metrics import confusion, macro_f1

    by_key = {json.dumps(f.params, sort_keys=True): f for f in finalists}
    oof: dict[int, dict[str, np.ndarray]] = {f.index: {} for f in finalists}
    truth: dict[str, int] = {}
    fold_f1: dict[int, dict[int, float]] = {f.index: {} for f in finalists}
    test_sum, test_n, test_ids, class_names, resolved = None, 0, None, None, None
    missing = []
    for t in store.list_trials(final.id):
        f = by_key.get(json.dumps(t.params.get("candidate"), sort_keys=True))
        if f is None:
            continue
        out = Path(t.output_dir or "")
        if t.state != "finished" or not (out / "val_predictions.csv").is_file():
            missing.append(f"{t.name} ({t.state}{': ' + t.error.splitlines()[0] if t.error else ''})")
            continue
        keys, probs = _read_probs(out / "val_predictions.csv")
        for (img, target), p in zip(keys, probs):
            if img in oof[f.index]:
                raise FinalizeError(f"{img} is held out by two folds of finalist {f.index}: the folds overlap")
            oof[f.index][img] = p
            truth[img] = int(target)
        fold_f1[f.index][int(t.params["fold"])] = macro_f1([int(k[1]) for k in keys], probs.argmax(1))
        if resolved is None and (out / "config.yaml").is_file():
            resolved = yaml.safe_load((out / "config.yaml").read_text())
        if class_names is None and (out / "confusion_matrix.json").is_file():
            class_names = json.loads((out / "confusion_matrix.json").read_text())["class_names"]
        if (out / "test_predictions.csv").is_file():
            tkeys, tprobs = _read_probs(out / "test_predictions.csv")
            ids = [k[0] for k in tkeys]
            if test_ids is not None and ids != test_ids:
                raise FinalizeError(f"{t.name}: its test predictions are not in the order of the others")
            test_ids = ids
            test_sum = tprobs if test_sum is None else test_sum + tprobs
            test_n += 1
    expected = len(finalists) * folds
    done = sum(len(v) for v in fold_f1.values())
    if done < expected:
        raise FinalizeError(f"{done} of {expected} fold trials of sweep {final.id} have predictions; not ready: "
                            + "; ".join(missing[:8]) + ". Run the same `cvsweep finalize` again: it retries them "
                            "(fix what failed first; `cvsweep runs " + final.id + " --state failed` shows why)")
    images = sorted(truth)
    for f in finalists:
        if sorted(oof[f.index]) != images:
            raise FinalizeError(f"finalist {f.index}'s folds do not hold out every image exactly once")
    y = np.array([truth[i] for i in images])
    stacked = np.stack([np.stack([oof[f.index][i] for i in images]) for f in finalists])   # (K, N, C)
    ensemble = stacked.mean(axis=0)
    rows = []
    for f, p in zip(finalists, stacked):
        rows.append({"index": f.index, "run": f.run, "run_id": f.run_id, "parent_metric": f.metric,
                     "params": f.params, "oof_macro_f1": macro_f1(y, p.argmax(1)),
                     "fold_macro_f1": [fold_f1[f.index][k] for k in sorted(fold_f1[f.index])]})
    n_classes = ensemble.shape[1]
    names = class_names or [str(c) for c in range(n_classes)]
    return FinalResult(parent=final.config["parameters"]["parent_sweep"]["value"], final_sweep=final.id, folds=folds, finalists=rows,
                       oof_macro_f1=macro_f1(y, ensemble.argmax(1)),
                       confusion=confusion(y, ensemble.argmax(1), n_classes).tolist(), class_names=names,
                       n_images=len(images), test_ids=test_ids or [],
                       test_probs=None if test_sum is None else test_sum / test_n,
                       data_dir=(resolved or {}).get("data_dir"),
                       sample_submission=(resolved or {}).get("sample_submission", "sample_submission.csv"))


def final_path(state_root: Path, parent_id: str) -> Path:
    """Where a sweep's finalize results live (the report's "final" section reads them)."""
    return Path(state_root) / "sweeps" / parent_id / "final.json"


def write_outputs(result: FinalResult, output: str | Path, state_root: Path) -> Path:
    """The submission CSV (sample_submission order and header) and final.json beside the parent sweep."""
    from cvtrain.predict import read_test_set, write_submission

    data_dir, sample_submission = result.data_dir, result.sample_submission
    if not data_dir:
        raise FinalizeError("no fold trial left its config.yaml: cannot tell which data's test set to predict")
    if result.test_probs is None:
        raise FinalizeError(f"no test predictions: {Path(data_dir) / sample_submission} and the test images "
                            "are needed to write a submission")
    header, ids, _ = read_test_set(data_dir, sample_submission=sample_submission)
    if ids != result.test_ids:
        raise FinalizeError(f"the fold trials predicted another test set than {sample_submission} lists now")
    out = write_submission(output, header, ids, result.test_probs.argmax(1))
    path = final_path(state_root, result.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result.to_json(), "submission": str(Path(output).resolve())}, indent=2,
                               default=float))
    return out
