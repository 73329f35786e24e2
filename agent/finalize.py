"""From a sweep to a submission: ``cvsweep finalize``.

1. The top K distinct configurations of a sweep's leaderboard (stopped trials
   count with their real metric) become the *finalists*, each with the whole
   configuration its trial saved (config.yaml), less paths, ids and split settings.
2. Each is retrained on N stratified folds of the training data (less the sweep's
   holdout, if it has one), as a generated grid sweep over (candidate, fold) on the
   local controller: the same launcher, workers, leases and resume as any sweep.
   Every fold trial's final model predicts its held-out fold with the test-time
   views (and without), the test set with those views, and the holdout
   (cvtrain.heldout).
3. :func:`read_folds` gathers those files as arrays; :func:`score` chooses the
   ensemble's weights by forward selection on the out-of-fold softmax and estimates
   it nested (agent.ensemble), beside the equal-weight ensemble and the best single
   finalist; :func:`write_outputs` writes the submission (the chosen weights) and
   final.json.

The final epoch's model is used, never the fold's best epoch: choosing the epoch
on the held-out fold would make the out-of-fold estimate optimistic. The finalists
themselves were chosen on images that are part of the OOF set, so the figures
favour them a little; the holdout (``cvsweep create --holdout``) is the one
number that nothing was chosen on.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from cvtrain.config import GROUPS, PARAM_KEYS, DataConfig

from . import ensemble as E
from .controller import LocalController
from .fold_outputs import OutputsError, incomplete, read_folds
from .queries import leaderboard
from .store import RunStore, SQLiteStore, Sweep

#: Settings a finalist does not take from its trial: where outputs go, how the run is named and
#: logged, how the data is split (finalize sets the folds) and what belongs to the machine.
NOT_INHERITED = frozenset(
    {f for g in ("wandb", "logging", "paths") for f in GROUPS[g].__dataclass_fields__}
    | {"folds", "fold", "split_seed", "val_fraction", "holdout", "holdout_seed", "cache_dir", "num_workers",
       "device"})


class FinalizeError(RuntimeError):
    pass


@dataclass
class Finalist:
    index: int                 # 1-based, in leaderboard order
    run: str                   # the parent sweep's trial it comes from
    run_id: str | None
    metric: float              # the parent sweep's metric for it
    params: dict               # the configuration it is retrained with
    config_from: str = "config.yaml"   # or "swept parameters" when the trial left no config.yaml


def inherited_config(saved: dict) -> dict:
    """A trial's saved configuration as a finalist's: known settings, less :data:`NOT_INHERITED`."""
    return {k: v for k, v in saved.items() if k in PARAM_KEYS and k not in NOT_INHERITED}


def select_finalists(store: RunStore, sweep_id: str, top: int) -> list[Finalist]:
    """The ``top`` best distinct configurations of the sweep, best first, as their trials saved them."""
    if top < 1:
        raise FinalizeError(f"--top {top}: take at least one configuration")
    dirs = {t.name: t.output_dir for t in store.list_trials(sweep_id, with_history=False)}
    out: list[Finalist] = []
    seen: set[str] = set()
    for r in leaderboard(store, sweep_id):
        saved = Path(dirs.get(r["run"]) or "-") / "config.yaml"
        if saved.is_file():
            params, source = inherited_config(yaml.safe_load(saved.read_text()) or {}), "config.yaml"
        else:  # a W&B trial that ran on another machine: its swept values are what is known here
            params, source = inherited_config(r["config"]), "swept parameters"
        key = json.dumps(params, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        out.append(Finalist(len(out) + 1, r["run"], r.get("run_id"), r["metric"], params, source))
        if len(out) == top:
            break
    if not out:
        raise FinalizeError(f"sweep {sweep_id} has no trial with a finite metric to finalize yet; "
                            f"run `cvsweep agent {sweep_id}` first (or see `cvsweep runs {sweep_id} --state failed`)")
    return out


def with_holdout(config: dict, fraction: float, seed: int = 0) -> dict:
    """A sweep config whose every trial leaves the same stratified ``fraction`` out (data settings
    holdout, holdout_seed: the trainer's split honours them on either backend)."""
    params = dict(config.get("parameters") or {})
    clash = sorted({"holdout", "holdout_seed"} & set(params))
    if clash:
        raise FinalizeError(f"the sweep file already sets {', '.join(clash)}; drop it there or leave out --holdout")
    params.update(holdout={"value": fraction}, holdout_seed={"value": seed})
    return {**config, "parameters": params}


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
    for key in ("holdout", "holdout_seed"):  # the sweep's holdout stays out of the folds too
        if key in (parent.config.get("parameters") or {}):
            params[key] = parent.config["parameters"][key]
    return {"name": f"{parent.name or parent.id}-final",
            "description": f"finalize {parent.id}: top {len(finalists)} configurations x {folds} folds",
            "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"}, "parameters": params}


def find_or_create_final_sweep(store: SQLiteStore, parent: Sweep, config: dict) -> tuple[Sweep, bool, list[str]]:
    """The finalize sweep with exactly this config (resumed: its whole folds stay), else a new one;
    and the fold trials queued again, each with why."""

    for s in reversed(store.list_sweeps()):
        if s.config != config or s.state == "cancelled":
            continue
        # A grid never suggests a point again: a fold that failed or crashed, or finished without
        # whole outputs (a test set added later, a partial file), is queued once more; it resumes
        # from its last checkpoint when it has one (after its last epoch: it only predicts).
        again = {t.id: f"{t.name}: {t.state}" for t in store.list_trials(s.id, with_history=False)
                 if t.state in ("failed", "crashed")}
        for t in store.list_trials(s.id, states=("finished",), with_history=False):
            why = incomplete(t)
            if why:
                again[t.id] = f"{t.name}: {why}"
        store.queue_again(list(again))
        if s.state == "finished":
            store.set_sweep_state(s.id, "running")
        return s, True, list(again.values())
    return LocalController(store).create_sweep(config, project=parent.project, entity=parent.entity), False, []


@dataclass
class FinalResult:
    parent: str
    final_sweep: str
    folds: int
    finalists: list[dict]                  # index, run, params, weight, oof figures, fold figures, tied
    estimates: dict                        # agent.ensemble.score on the submission's views
    oof_views: list[str]
    folds_stratified: bool
    small_classes: dict                    # class name -> images, for classes with fewer images than folds
    confusion: list                        # the selected ensemble's (nested) out-of-fold confusion matrix
    class_names: list[str]
    n_images: int
    single_view: dict = field(default_factory=dict)   # best_single, equal, selected without test-time views
    shifted: dict = field(default_factory=dict)       # the same on the shifted held-out copies, when made
    holdout: dict | None = None            # n_images, macro_f1 of the submitted ensemble
    test_ids: list[str] = field(default_factory=list)
    test_probs: np.ndarray | None = None   # the submitted ensemble's (weighted) softmax
    data_dir: str | None = None            # as the fold trials resolved it (their config.yaml)
    sample_submission: str = "sample_submission.csv"

    @property
    def oof_macro_f1(self) -> float:
        """The selected ensemble's nested out-of-fold macro-F1: the figure finalize stands by."""
        return self.estimates["selected"]

    def to_json(self) -> dict:
        e = self.estimates
        out = {"parent": self.parent, "final_sweep": self.final_sweep, "folds": self.folds,
               "folds_stratified": self.folds_stratified, "small_classes": self.small_classes,
               "oof_views": self.oof_views, "finalists": self.finalists,
               "weights": {f["run"]: f["weight"] for f in self.finalists}, "oof_macro_f1": self.oof_macro_f1,
               "p_selected_beats_best_single": e["p_selected_beats_best_single"],
               "oof_single_view": self.single_view, "oof_shift": self.shifted or None, "holdout": self.holdout,
               "confusion": self.confusion, "class_names": self.class_names, "n_images": self.n_images,
               "created_at": time.time()}
        for name in ("best_single", "equal", "selected"):
            out[f"oof_macro_f1_{name}"] = e[name]
            out[f"oof_macro_f1_{name}_ci90"] = e[f"{name}_ci90"]
            out[f"oof_fold_macro_f1_{name}"] = e[f"{name}_folds"]
        return out


def collect(store: SQLiteStore, final: Sweep, finalists: list[Finalist], folds: int) -> FinalResult:
    """Read every fold's predictions and score them (:func:`score`); FinalizeError when some are missing."""

    try:
        data, missing = read_folds(store, final, [f.params for f in finalists])
    except OutputsError as exc:
        raise FinalizeError(str(exc)) from None
    if missing:
        raise FinalizeError(f"{len(missing)} of {len(finalists) * folds} fold trials of sweep {final.id} have no "
                            "whole predictions: " + "; ".join(missing[:8]) + ". Run the same `cvsweep finalize` "
                            f"again: it queues them once more (fix what failed first; `cvsweep runs {final.id} "
                            "--state failed` shows why)")
    return score(data, finalists, final, folds)


def score(data, finalists: list[Finalist], final: Sweep, folds: int, n_boot: int = 2000) -> FinalResult:
    """The ensemble out of fold (agent.ensemble) from the fold trials' arrays (fold_outputs.FoldOutputs)."""
    from cvtrain.data import folds_stratified, small_classes  # lazy: the trainer's data path (torch)

    est = E.score(data.oof["tta"], data.y, data.fold_of, n_boot=n_boot)
    c = data.oof["tta"].shape[2]
    names = data.class_names or [str(k) for k in range(c)]
    best_ci = est["single_ci90"][est["best_index"]]
    rows = [{"index": f.index, "run": f.run, "run_id": f.run_id, "parent_metric": f.metric, "params": f.params,
             "config_from": f.config_from, "weight": w, "oof_macro_f1": f1, "oof_macro_f1_ci90": ci,
             "oof_macro_f1_single_view": E.macro_f1(data.y, data.oof["single"][k].argmax(1), c),
             "fold_macro_f1": E.per_fold_f1(data.y, data.oof["tta"][k].argmax(1), data.fold_of, c),
             "tied_with_best": ci[1] >= best_ci[0]}
            for k, (f, w, f1, ci) in enumerate(zip(finalists, est["weights"], est["single_f1"], est["single_ci90"]))]
    nested, _ = E.nested_selection(data.oof["tta"], data.y, data.fold_of)
    weights = np.array(est["weights"])
    cfg = data.config
    result = FinalResult(
        parent=final.config["parameters"]["parent_sweep"]["value"], final_sweep=final.id, folds=folds,
        finalists=rows, estimates=est, oof_views=list(cfg.get("tta") or ["none"]),
        folds_stratified=folds_stratified(data.y, DataConfig(folds=folds, stratify=bool(cfg.get("stratify", True)))),
        small_classes={names[k]: n for k, n in small_classes(data.y, folds).items()},
        confusion=_confusion(data.y, nested, c), class_names=names, n_images=len(data.ids),
        single_view=_points(data.oof["single"], data.y, data.fold_of),
        shifted=_points(data.oof["shift"], data.y, data.fold_of) if "shift" in data.oof else {},
        test_ids=data.test_ids, test_probs=None if data.test is None else E.combine(data.test, weights),
        data_dir=cfg.get("data_dir"), sample_submission=cfg.get("sample_submission") or "sample_submission.csv")
    if data.holdout is not None:
        pred = E.combine(data.holdout, weights).argmax(1)
        result.holdout = {"n_images": len(data.holdout_ids), "macro_f1": E.macro_f1(data.holdout_y, pred, c)}
    return result


def _points(probs: np.ndarray, y: np.ndarray, fold_of: np.ndarray) -> dict:
    """Best single, equal-weight and nested selected macro-F1 (no intervals) of one set of OOF predictions."""
    c = probs.shape[2]
    singles = [E.macro_f1(y, p.argmax(1), c) for p in probs]
    nested, _ = E.nested_selection(probs, y, fold_of)
    return {"best_single": max(singles), "equal": E.macro_f1(y, probs.mean(0).argmax(1), c),
            "selected": E.macro_f1(y, nested, c)}


def _confusion(y: np.ndarray, pred: np.ndarray, c: int) -> list:
    from cvtrain.metrics import confusion  # lazy: sklearn, when the scores are written

    return confusion(y, pred, c).tolist()


def final_path(state_root: Path, parent_id: str) -> Path:
    """Where a sweep's finalize results live (the report's "final" section reads them)."""
    return Path(state_root) / "sweeps" / parent_id / "final.json"


def write_outputs(result: FinalResult, output: str | Path, state_root: Path) -> Path:
    """The submission CSV (sample_submission order and header) and final.json beside the parent sweep."""
    from cvtrain.predict import read_test_set, write_submission  # lazy: the trainer's predict path (torch)

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
