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
3. :func:`read_folds` gathers those files as arrays; with ``--tta auto`` (the default when
   the finalists validate on shifted copies, val_shift) the views are chosen on the
   out-of-fold predictions (agent.finalize_views); :func:`score` chooses the ensemble's
   weights by forward selection on the out-of-fold softmax (of the shifted copies when the
   fold trials made them: the shifted test is what counts) and estimates it nested
   (agent.ensemble), beside the equal-weight ensemble and the best single finalist, the
   clean figures beside the shifted; :func:`write_outputs` writes the submission (the
   chosen weights) and final.json.

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
from cvtrain.metrics import confusion
from cvtrain.shift_profile import is_off

from . import ensemble as E
from .controller import LocalController
from .finalize_views import apply_views, choose_views
from .fold_outputs import OutputsError, incomplete, read_folds
from .queries import leaderboard
from .store import RunStore, SQLiteStore, Sweep, Trial

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


def shift_on(params: dict) -> bool:
    """Whether a finalist's configuration validates on shifted copies (val_shift: a profile dict, or a
    profile file a trial without config.yaml was swept with)."""
    profile = params.get("val_shift")
    if isinstance(profile, dict):
        try:
            return not is_off(profile)
        except (KeyError, TypeError, ValueError):
            return bool(profile)
    return bool(profile)


def auto_views(finalists: list[Finalist], tta) -> bool:
    """``--tta auto``, or no ``--tta`` and every finalist with val_shift on: choose the views out of fold."""
    return tta == "auto" or (tta is None and all(shift_on(f.params) for f in finalists))


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


def find_or_create_final_sweep(store: SQLiteStore, parent: Sweep, config: dict,
                               views: bool = False) -> tuple[Sweep, bool, list[str]]:
    """The finalize sweep with exactly this config (resumed: its whole folds stay), else a new one;
    and the fold trials queued again, each with why (``views``: every view's softmax is needed too)."""

    for s in reversed(store.list_sweeps()):
        if s.config != config or s.state == "cancelled":
            continue
        # A grid never suggests a point again: a fold that failed or crashed, or finished without
        # whole outputs (a test set added later, a partial file), is queued once more; it resumes
        # from its last checkpoint when it has one (after its last epoch: it only predicts).
        again = {t.id: (t, t.state) for t in store.list_trials(s.id, with_history=False)
                 if t.state in ("failed", "crashed")}
        for t in store.list_trials(s.id, states=("finished",), with_history=False):
            why = incomplete(t, views)
            if why:
                again[t.id] = (t, why)
        store.queue_again(list(again))
        if s.state == "finished":
            store.set_sweep_state(s.id, "running")
        return s, True, [f"{t.name}: {why}; {_restart_note(t)}" for t, why in again.values()]
    return LocalController(store).create_sweep(config, project=parent.project, entity=parent.entity), False, []


def _restart_note(trial: Trial) -> str:
    """How a fold trial queued again will start: from the last.pt its run kept, or from scratch (none
    written yet, or keep_checkpoints best or none deleted it when the run ended: best.pt stayed)."""
    ckpt_dir = Path(trial.params.get("checkpoint_dir") or Path(trial.output_dir or "-", "checkpoints"))
    if (ckpt_dir / "last.pt").is_file():
        return "it resumes from its last.pt"
    if (ckpt_dir / "best.pt").is_file():
        return "no last.pt was kept (keep_checkpoints): it trains again from the start"
    return "no last.pt: it trains again from the start"


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
    selected_on: str = "clean"             # the OOF images weights and estimates are on: "shifted" | "clean"
    clean: dict = field(default_factory=dict)         # best_single, equal, selected on the clean held-out images
    tta_choice: dict | None = None         # --tta auto: agent.finalize_views.ViewChoice.to_json()
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
               "selected_on": self.selected_on, "tta_choice": self.tta_choice, "oof_clean": self.clean,
               "oof_single_view": self.single_view, "oof_shift": self.shifted or None, "holdout": self.holdout,
               "confusion": self.confusion, "class_names": self.class_names, "n_images": self.n_images,
               "created_at": time.time()}
        for name in ("best_single", "equal", "selected"):
            out[f"oof_macro_f1_{name}"] = e[name]
            out[f"oof_macro_f1_{name}_ci90"] = e[f"{name}_ci90"]
            out[f"oof_fold_macro_f1_{name}"] = e[f"{name}_folds"]
        return out


def collect(store: SQLiteStore, final: Sweep, finalists: list[Finalist], folds: int,
            views: bool = False) -> FinalResult:
    """Read every fold's predictions and score them (:func:`score`); FinalizeError when some are missing.
    ``views``: the test-time views are chosen out of fold first (agent.finalize_views)."""

    try:
        data, missing = read_folds(store, final, [f.params for f in finalists], views)
    except OutputsError as exc:
        raise FinalizeError(str(exc)) from None
    if missing:
        raise FinalizeError(f"{len(missing)} of {len(finalists) * folds} fold trials of sweep {final.id} have no "
                            "whole predictions: " + "; ".join(missing[:8]) + ". Run the same `cvsweep finalize` "
                            f"again: it queues them once more (fix what failed first; `cvsweep runs {final.id} "
                            "--state failed` shows why)")
    return score_views(data, finalists, final, folds) if views else score(data, finalists, final, folds)


def score_views(data, finalists: list[Finalist], final: Sweep, folds: int, n_boot: int = 2000) -> FinalResult:
    """:func:`score` with the views chosen on the out-of-fold predictions (``data.views``) first."""
    choice = choose_views(data)
    apply_views(data, choice.views)
    result = score(data, finalists, final, folds, n_boot)
    result.oof_views, result.tta_choice = choice.views, choice.to_json()
    return result


def score(data, finalists: list[Finalist], final: Sweep, folds: int, n_boot: int = 2000) -> FinalResult:
    """The ensemble out of fold (agent.ensemble) from the fold trials' arrays (fold_outputs.FoldOutputs):
    weights and estimates on the shifted held-out copies when every fold trial made them, else the clean."""
    from cvtrain.data import folds_stratified, small_classes  # lazy: the trainer's data path (torch)

    selected_on = "shifted" if "shift" in data.oof else "clean"
    probs = data.oof["shift" if selected_on == "shifted" else "tta"]
    est = E.score(probs, data.y, data.fold_of, n_boot=n_boot)
    c = probs.shape[2]
    names = data.class_names or [str(k) for k in range(c)]
    nested = E.predict_nested(probs, data.fold_of, est["fold_weights"])
    weights = np.array(est["weights"])
    cfg = data.config
    result = FinalResult(
        parent=final.config["parameters"]["parent_sweep"]["value"], final_sweep=final.id, folds=folds,
        finalists=_finalist_rows(data, finalists, est, probs), estimates=est,
        oof_views=list(cfg.get("tta") or ["none"]),
        folds_stratified=folds_stratified(data.y, DataConfig(folds=folds, stratify=bool(cfg.get("stratify", True)))),
        small_classes={names[k]: n for k, n in small_classes(data.y, folds).items()},
        confusion=_confusion(data.y, nested, c), class_names=names, n_images=len(data.ids),
        single_view=_points(data.oof["single"], data.y, data.fold_of),
        shifted=_points(data.oof["shift"], data.y, data.fold_of) if "shift" in data.oof else {},
        test_ids=data.test_ids, test_probs=None if data.test is None else E.combine(data.test, weights),
        data_dir=cfg.get("data_dir"), sample_submission=cfg.get("sample_submission") or "sample_submission.csv",
        selected_on=selected_on, clean=_points(data.oof["tta"], data.y, data.fold_of, est["fold_weights"]))
    if data.holdout is not None:
        pred = E.combine(data.holdout, weights).argmax(1)
        result.holdout = {"n_images": len(data.holdout_ids), "macro_f1": E.macro_f1(data.holdout_y, pred, c)}
        if data.holdout_shift is not None:  # its test-like copies (val_shift), scored once too
            pred = E.combine(data.holdout_shift, weights).argmax(1)
            result.holdout["macro_f1_shift"] = E.macro_f1(data.holdout_y, pred, c)
    return result


def _finalist_rows(data, finalists: list[Finalist], est: dict, probs: np.ndarray) -> list[dict]:
    """Each finalist's weight and out-of-fold figures (on ``probs``, the selection's images), clean and shifted."""
    c = probs.shape[2]
    best_ci = est["single_ci90"][est["best_index"]]

    def f1(variant: str, k: int) -> float | None:
        return E.macro_f1(data.y, data.oof[variant][k].argmax(1), c) if variant in data.oof else None

    return [{"index": f.index, "run": f.run, "run_id": f.run_id, "parent_metric": f.metric, "params": f.params,
             "config_from": f.config_from, "weight": w, "oof_macro_f1": score, "oof_macro_f1_ci90": ci,
             "oof_macro_f1_clean": f1("tta", k), "oof_macro_f1_shift": f1("shift", k),
             "oof_macro_f1_single_view": f1("single", k),
             "fold_macro_f1": E.per_fold_f1(data.y, probs[k].argmax(1), data.fold_of, c),
             "tied_with_best": ci[1] >= best_ci[0]}
            for k, (f, w, score, ci) in enumerate(zip(finalists, est["weights"], est["single_f1"],
                                                      est["single_ci90"]))]


def _points(probs: np.ndarray, y: np.ndarray, fold_of: np.ndarray, fold_weights: dict | None = None) -> dict:
    """Best single, equal-weight and nested selected macro-F1 (no intervals) of one set of OOF predictions;
    ``fold_weights``: the selection made on other images (each fold's weights), else one on these."""
    c = probs.shape[2]
    singles = [E.macro_f1(y, p.argmax(1), c) for p in probs]
    if fold_weights is None:
        nested, _ = E.nested_selection(probs, y, fold_of)
    else:
        nested = E.predict_nested(probs, fold_of, fold_weights)
    return {"best_single": max(singles), "equal": E.macro_f1(y, probs.mean(0).argmax(1), c),
            "selected": E.macro_f1(y, nested, c)}


def _confusion(y: np.ndarray, pred: np.ndarray, c: int) -> list:
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
