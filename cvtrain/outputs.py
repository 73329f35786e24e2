"""What a run leaves: its summary (summary.json and the W&B summary), the checkpoints kept, the
final reports (confusion matrix, per-class scores), its predictions, and the result ``train`` returns.
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from . import checkpoint as ckpt
from . import data as D
from . import valshift
from .heldout import VIEWS_FILE, all_views, mean_of, write_heldout_predictions, write_probs, write_view_predictions
from .metrics import confusion, per_class_report, save_confusion_png
from .predict import decode_test_set
from .stop import EXIT_PREEMPTED
from .tracking import finish_run, mark_preempting, save_model_artifact

if TYPE_CHECKING:
    from .engine import Session

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("best_val_f1", "val_f1", "val_acc", "train_loss", "val_loss", "params_total",
                "params_trainable", "flops", "epoch_time", "state")


@dataclass
class TrainResult:
    state: str                      # finished | stopped | preempted | failed | lost
    summary: dict
    output_dir: Path
    best_checkpoint: Optional[Path]
    run_id: Optional[str] = None
    reason: Optional[str] = None
    history: list = field(default_factory=list)

    @property
    def best_val_f1(self) -> float:
        return self.summary.get("best_val_f1", float("nan"))


@dataclass
class Outcome:
    state: str = "finished"          # finished | stopped | preempted | lost
    reason: Optional[str] = None


def end_failed(s: Session, exc: BaseException, held: Callable[[], bool] = lambda: True) -> None:
    """The run's own error: summary.json and the W&B run say failed, with the reason (unless another
    worker holds the trial now: its outputs are that worker's)."""
    reason = f"{type(exc).__name__}: {exc}"
    try:
        s.writer.wait()  # the checkpoint in flight lands (a resumed trial reads it) before anything is tidied
    except Exception as write_exc:  # noqa: BLE001 - the run's own error is the one reported
        log.warning("the last checkpoint write failed too: %s", write_exc)
    summary = _summary(s.state, s.stats, "failed", reason, s.monitor.stop())
    if not held():
        finish_run(s.run, 1)
        return
    if isinstance(exc, Exception):  # an interrupt (KeyboardInterrupt) may be resumed: keep last.pt
        _retain_checkpoints(s)
    _write_json(s.out_dir / "summary.json", summary)
    _summary_to_run(s.run, summary)
    finish_run(s.run, 1)


def end(s: Session, outcome: Outcome, held: Callable[[], bool] = lambda: True) -> TrainResult:
    """Final reports, artifacts, summary; the W&B run ends with exit code 0 (finished, stopped) or,
    preempted, marked preempting with a non-zero exit code: W&B's contract for requeueing it.

    ``held()`` is asked before each step that writes the run's outputs: a worker that stalled past its
    lease while ending must not slim, delete or overwrite what the worker now resuming the trial reads.
    """
    summary = _summary(s.state, s.stats, outcome.state, outcome.reason, s.monitor.stop())
    lost = "this worker lost the trial while ending it"
    if outcome.state == "lost" or not held():
        return _end_lost(s, summary, outcome.reason if outcome.state == "lost" else lost)
    if outcome.state != "preempted":  # a preempted run resumes from last.pt
        _retain_checkpoints(s)
    best_path = s.ckpt_dir / "best.pt" if (s.ckpt_dir / "best.pt").exists() else None
    if s.state.best_preds is not None:
        if not held():
            return _end_lost(s, summary, lost)
        _final_reports(s.run, s.out_dir, s.state, s.data.index.class_names, s.num_classes)
    if s.cfg.wandb.log_artifacts:
        _log_checkpoints(s)
    if s.cfg.paths.save_predictions and outcome.state == "finished":
        if not held():
            return _end_lost(s, summary, lost)
        _save_predictions(s)
    if not held():
        return _end_lost(s, summary, lost)
    _summary_to_run(s.run, summary)
    _write_json(s.out_dir / "summary.json", summary)
    if outcome.state == "preempted":
        mark_preempting(s.run)
    finish_run(s.run, EXIT_PREEMPTED if outcome.state == "preempted" else 0)
    return TrainResult(outcome.state, summary, s.out_dir, best_path, _run_id(s.run), outcome.reason,
                       list(s.state.history))


def _end_lost(s: Session, summary: dict, reason: str) -> TrainResult:
    """Another worker owns the trial now: leave its outputs alone."""
    finish_run(s.run, 0)
    return TrainResult("lost", summary, s.out_dir, None, _run_id(s.run), reason, list(s.state.history))


def _retain_checkpoints(s: Session) -> None:
    """keep_checkpoints, applied once the run has ended (before artifacts reference the files)."""
    try:
        ckpt.retain(s.ckpt_dir, s.cfg.paths.keep_checkpoints)
    except OSError as exc:
        log.warning("keep_checkpoints=%s: could not tidy %s: %s", s.cfg.paths.keep_checkpoints, s.ckpt_dir, exc)


def _log_checkpoints(s: Session) -> None:
    """The checkpoints that stay, as W&B model artifacts (referenced where they are, not copied)."""
    e, st = s.cfg.experiment, s.state
    best, last = s.ckpt_dir / "best.pt", s.ckpt_dir / "last.pt"
    meta = {"val_f1": st.best_val_f1, "epoch": st.best_epoch, "params": s.stats["params_total"],
            "flops": s.stats["flops"], "model_name": e.model_name, "img_size": e.img_size}
    if best.exists():
        save_model_artifact(s.run, best, aliases=["best", f"epoch-{st.best_epoch}"], metadata=meta)
    if last.exists() and (st.epoch != st.best_epoch or not best.exists()):
        save_model_artifact(s.run, last, aliases=["latest", f"epoch-{st.epoch}"], metadata={**meta, "epoch": st.epoch})


def _save_predictions(s: Session) -> None:
    """The final epoch's model: softmax on its held-out images (cvtrain.heldout: clean, and the shifted
    copies the epochs validated on when val_shift is on) and, when the data has a test set, on the test
    images with the ``tta`` views; every view's softmax in view_predictions.npz. Finalize builds OOF
    estimates and the ensemble from these files; the final epoch (not the best) keeps the OOF estimate honest."""
    e, d = s.cfg.experiment, s.cfg.data
    holdout = np.asarray(D.holdout_indices(s.data.index.labels, d)[1], dtype=np.int64)
    shifted = holdout_shifted = None
    if s.shifted_val is not None:  # the copies stay on the device they were made on
        shifted = s.shifted_val.x
        if len(holdout):  # the holdout's test-like copies, drawn as the validation's (by image ID)
            ids = s.data.index.image_ids()
            holdout_shifted = valshift.shifted_copies(s.data.val_ds.images, holdout, [ids[j] for j in holdout],
                                                      e.val_shift, e.val_shift_seed, s.device)
    arrays = write_heldout_predictions(s.model, s.data.val_ds.images, s.data.index, s.data.val_ds.indices,
                                       holdout, list(e.tta), s.normalize, e.batch_size * 2, s.out_dir, shifted,
                                       holdout_shifted)
    root = Path(d.data_dir)
    if not (root / d.sample_submission).is_file():
        log.info("no %s in %s: no test predictions", d.sample_submission, root)
    else:
        with warnings.catch_warnings():  # unreadable test images were named at setup (check_test_set)
            warnings.simplefilter("ignore", UserWarning)
            _, test_ids, decoded = decode_test_set(root, e.img_size, d.resize, test_dir=d.test_dir,
                                                   sample_submission=d.sample_submission, cache_dir=d.cache_dir,
                                                   skip_bad_images=d.skip_bad_images)
        arrays.update(test_ids=np.array(test_ids), test=all_views(s.model, decoded.array, s.normalize,
                                                                  e.batch_size * 2))
        write_probs(s.out_dir / "test_predictions.csv", ["ID"], [(i,) for i in test_ids],
                    mean_of(arrays["test"], list(e.tta)))
    write_view_predictions(s.out_dir / VIEWS_FILE, arrays)


def _summary_to_run(run, summary: dict) -> None:
    """Numbers, the state and its reason into the W&B summary (the reason is how a failure reads there)."""
    if run is None or run.disabled:
        return
    for k, v in summary.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "state":
            run.summary[k] = v
    run.summary["state"] = summary["state"]
    run.summary["stopped"] = summary["state"] == "stopped"
    if summary.get("reason"):
        run.summary["reason"] = summary["reason"]


def _run_id(run) -> str | None:
    return None if run is None or run.disabled else run.id


def _summary(state: ckpt.TrainState, stats: dict, result_state: str, reason, sys_peaks: dict) -> dict:
    last = state.history[-1] if state.history else {}
    out = {k: last.get(k, float("nan")) for k in ("val_f1", "val_acc", "val_loss", "train_loss", "train_acc",
                                                 "lr", "epoch_time")}
    out.update({
        "best_val_f1": state.best_val_f1 if state.best_epoch else float("nan"),
        "best_epoch": state.best_epoch,
        "epochs_completed": state.epoch,
        "params_total": stats["params_total"],
        "params_trainable": stats["params_trainable"],
        "flops": stats["flops"],
        "model_name": stats["model_name"],
        "state": result_state,
        "stopped": result_state == "stopped",
        "reason": reason,
        **sys_peaks,
    })
    if "val_shift_f1" in last:
        out.update({k: last[k] for k in ("val_shift_f1", "val_shift_acc", "val_shift_loss", "best_val_shift_f1")})
    return out


def _final_reports(run, out_dir: Path, state: ckpt.TrainState, class_names: list[str], num_classes: int) -> None:
    y_true, y_pred = state.best_preds
    names = class_names + [str(i) for i in range(len(class_names), num_classes)]
    cm = confusion(y_true, y_pred, num_classes)
    per_class = per_class_report(y_true, y_pred, names)
    _write_json(out_dir / "confusion_matrix.json", {"class_names": names, "matrix": cm.tolist(),
                                                   "epoch": state.best_epoch})
    _write_json(out_dir / "per_class.json", per_class)
    save_confusion_png(cm, names, out_dir / "confusion_matrix.png")
    if run is None or run.disabled:
        return
    import wandb  # lazy, as in cvtrain.tracking: only a run that logs to W&B pays its import

    run.log({
        "confusion_matrix": wandb.plot.confusion_matrix(y_true=list(y_true), preds=list(y_pred), class_names=names),
        "confusion_matrix_png": wandb.Image(str(out_dir / "confusion_matrix.png")),
        "per_class": wandb.Table(columns=list(per_class[0]), data=[list(r.values()) for r in per_class]),
    })


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    tmp.replace(path)


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

