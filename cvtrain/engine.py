"""The training loop: ``train(config, reporter) -> TrainResult``.

The trainer knows nothing about sweeps. ``train`` reads as its recipe: set up
(device, data, model, optimisation, resume), start the W&B run, fit epoch by
epoch (:mod:`cvtrain.epoch`), end (final reports, artifacts, summary: :mod:`cvtrain.outputs`).
A reporter, when given, is called after every epoch with that epoch's metrics
and may answer ``"stop"`` (the sweep ends the run early: finished, with its real
metric and its best checkpoint), ``"preempt"`` or ``"lost"``. A :class:`~cvtrain.stop.StopRequest`
set from another thread or a signal handler ends the run at the next batch the
same ways; ``last.pt`` of the last whole epoch is what ``--resume`` continues from.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import yaml
from torch import nn

from . import checkpoint as ckpt
from . import data as D
from . import valshift
from .config import Config, ConfigError
from .device import select_device
from .epoch import evaluate, train_one_epoch
from .loader import DeviceBatches, batch_loader
from .model import build_model, model_stats
from .norm import Normalizer, model_data_config
from .optim import amp_context, build_optimization, step_scheduler
from .outputs import Outcome, TrainResult, end, end_failed
from .predict import decode_test_set
from .split import split_record
from .stop import StopRequest
from .system import SystemMonitor, environment_info
from .tracking import create_run_name, in_wandb_sweep, init_wandb
from .validation import validate_config

log = logging.getLogger(__name__)

Reporter = Callable[[int, dict], Optional[str]]


# ---------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    # Reseeding from (seed, epoch) at every epoch start makes a resumed run draw
    # the same mixup/dropout/shuffle numbers as an uninterrupted one.
    return (seed * 1_000_003 + epoch * 7919) % 2**31






@dataclass
class DataBundle:
    index: D.DatasetIndex
    train_ds: D.CachedImageDataset
    val_ds: D.CachedImageDataset
    train_loader: DeviceBatches     # uint8 batches on the device, augmented (set_epoch on train_ds)
    val_loader: DeviceBatches
    generator: torch.Generator      # the shuffle's; reseeded every epoch
    split: dict                     # the split used: split_seed, n_val, val_ids_sha1 (cvtrain.split)


def build_data(cfg: Config, device: torch.device) -> DataBundle:
    e, d = cfg.experiment, cfg.data
    index = D.load_index(d)
    decoded = D.load_or_build_cache(index.paths, e.img_size, d.resize, d.cache_dir, progress=cfg.logging.progress)
    skip = D.check_bad_images(decoded.bad, d.skip_bad_images)
    tr, va = D.split_indices(index.labels, d, e.seed)
    if skip:
        keep = np.array([p not in skip for p in index.paths])
        tr, va = tr[keep[tr]], va[keep[va]]
    ids = index.image_ids()
    split = split_record(e.seed if d.split_seed is None else d.split_seed, [ids[j] for j in va])
    if len(tr) < e.batch_size and (e.mixup.alpha > 0 or e.mixup.cutmix_alpha > 0):
        raise ConfigError([f"batch_size={e.batch_size}: larger than the {len(tr)} training images"])
    on_device = d.augment_on == "device"
    # augment_on=cpu: the dataset augments each sample in the workers, which must then be re-created
    # every epoch to see the new epoch (batch_loader sees to it); on the device the workers only slice, and persist.
    train_ds = D.CachedImageDataset(decoded.array, index.labels, tr, aug=None if on_device else e.augment, seed=e.seed)
    val_ds = D.CachedImageDataset(decoded.array, index.labels, va, aug=None)
    g = torch.Generator()
    pin = device.type == "cuda"
    use_mixup = e.mixup.alpha > 0 or e.mixup.cutmix_alpha > 0
    train = batch_loader(train_ds, e.batch_size, shuffle=True, generator=g, num_workers=d.num_workers,
                         drop_last=use_mixup and len(tr) >= e.batch_size, pin_memory=pin)
    val = batch_loader(val_ds, e.batch_size * 2, shuffle=False, num_workers=d.num_workers, pin_memory=pin)
    return DataBundle(index, train_ds, val_ds,
                      DeviceBatches(train, device, aug=e.augment if on_device else None, seed=e.seed),
                      DeviceBatches(val, device), g, split)




# ---------------------------------------------------------------------------
def resolve_output_dir(cfg: Config, environ=os.environ) -> Path:
    """The explicit output_dir; under `wandb agent`, one directory per W&B run (names can repeat)."""
    if cfg.paths.output_dir:
        return Path(cfg.paths.output_dir)
    if in_wandb_sweep(environ) and environ.get("WANDB_RUN_ID"):
        return Path(cfg.paths.output_root) / f"sweep-{environ['WANDB_SWEEP_ID']}" / environ["WANDB_RUN_ID"]
    return Path(cfg.paths.output_root) / (cfg.wandb.run_name or create_run_name(cfg))


@dataclass
class Session:
    """Everything one run holds while it trains; built once by :func:`_setup`."""
    cfg: Config
    device: torch.device
    out_dir: Path
    ckpt_dir: Path
    data: DataBundle
    model: nn.Module
    num_classes: int
    stats: dict
    optimizer: torch.optim.Optimizer
    scheduler: object
    mixup: object
    loss_fn: nn.Module
    autocast: Callable
    scaler: object
    normalize: Normalizer
    state: ckpt.TrainState
    resumed_from: Optional[Path]
    run: object = None
    monitor: Optional[SystemMonitor] = None
    shifted_val: Optional[valshift.ShiftedVal] = None   # val_shift's copies of the validation images
    val_probs: Optional[np.ndarray] = None   # the last epoch's softmax on the validation images
    writer: ckpt.Writer = field(default_factory=ckpt.Writer)   # writes each epoch's checkpoint while training goes on

    @property
    def log_fn(self):
        return None if self.run is None or self.run.disabled else self.run.log




def train(config: Config, reporter: Reporter | None = None, *, resume: str | None = None,
          stop_event: StopRequest | threading.Event | None = None, wandb_dir: str | None = None) -> TrainResult:
    """Train one model as ``config`` says, logging everything to W&B.

    ``resume``: a checkpoint path, or ``"auto"`` for ``<checkpoint_dir>/last.pt`` when it exists.
    ``reporter(epoch, metrics)`` may answer ``"stop"``, ``"preempt"`` or ``"lost"``; ``stop_event``
    (a :class:`~cvtrain.stop.StopRequest`, or a plain Event meaning preempted) ends the run at the
    next batch.
    """
    problems = validate_config(config)
    if problems:
        raise ConfigError(problems)
    s = _setup(config, resume)
    s.run = init_wandb(s.cfg, _run_extra(s), resume=s.resumed_from is not None, wandb_dir=wandb_dir)
    (s.out_dir / "config.yaml").write_text(yaml.safe_dump({**s.cfg.to_flat_dict(), "split": s.data.split},
                                                          sort_keys=True))
    s.monitor = SystemMonitor(s.cfg.logging.system_interval, sink=s.log_fn).start()
    try:
        outcome = _fit(s, reporter, stop_event)
    except BaseException as exc:
        try:
            end_failed(s, exc, _owner_check(reporter, stop_event))
        finally:
            _release(s, exc)
        raise
    return end(s, outcome, _owner_check(reporter, stop_event))


def _setup(cfg: Config, resume: str | None) -> Session:
    """Device, output directories, data, model, optimisation and the state to start from."""
    e = cfg.experiment
    seed_everything(e.seed)
    device = select_device(e.device)
    out_dir = resolve_output_dir(cfg)
    ckpt_dir = Path(cfg.paths.checkpoint_dir) if cfg.paths.checkpoint_dir else out_dir / "checkpoints"
    data = build_data(cfg, device)
    check_test_set(cfg)
    num_classes = e.num_classes or data.index.num_classes
    if num_classes < data.index.num_classes:
        raise ConfigError([f"num_classes={num_classes} (from {cfg.sources.get('num_classes')}): the data has "
                           f"{data.index.num_classes} classes"])
    absent = data.index.absent_classes()
    if absent:
        log.warning("the training data has no image of %d class(es) that %s lists: %s; the model cannot learn them",
                    len(absent), cfg.data.meta_csv, ", ".join(absent))
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(e, num_classes).to(device)
    channels_last = e.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    stats = model_stats(model, e, device)
    optimizer, scheduler, mixup, loss_fn = build_optimization(cfg, model, num_classes)
    autocast, scaler = amp_context(cfg, device)
    state, resume_path = ckpt.TrainState(), ckpt.find_resume(resume, ckpt_dir)
    if resume_path is not None:
        state = ckpt.load(resume_path, model, optimizer, scheduler, scaler, device, own_dir=ckpt_dir)
        log.info("resuming from %s after epoch %d", resume_path, state.epoch)
    shifted = valshift.build(cfg, data.val_ds.images, data.index.labels, data.val_ds.indices, data.index.image_ids(),
                             device)
    return Session(cfg, device, out_dir, ckpt_dir, data, model, num_classes, stats, optimizer, scheduler, mixup,
                   loss_fn, autocast, scaler, Normalizer(device, channels_last, model_data_config(model)), state,
                   resume_path, shifted_val=shifted)


def check_test_set(cfg: Config) -> None:
    """When the run will predict the test set (save_predictions), decode it now, before training:
    an unreadable test image fails the run here (or is named and skipped), not after its last epoch."""
    d = cfg.data
    if not (cfg.paths.save_predictions and (Path(d.data_dir) / d.sample_submission).is_file()):
        return
    decode_test_set(d.data_dir, cfg.experiment.img_size, d.resize, test_dir=d.test_dir,
                    sample_submission=d.sample_submission, cache_dir=d.cache_dir,
                    skip_bad_images=d.skip_bad_images, progress=cfg.logging.progress)


def _run_extra(s: Session) -> dict:
    """What the run config carries beyond the settings: environment, model and data facts."""
    return {"env": environment_info(), "model": s.stats, "num_classes": s.num_classes,
            "class_names": s.data.index.class_names, "absent_classes": s.data.index.absent_classes(),
            "n_train": len(s.data.train_ds), "n_val": len(s.data.val_ds), "split": s.data.split,
            "output_dir": str(s.out_dir), "data_config": s.normalize.data_config}


def _fit(s: Session, reporter: Reporter | None, stop_event) -> Outcome:
    """Epochs from the resumed one to the last, unless the reporter or ``stop_event`` ends them; the
    last checkpoint written (its write's error, if any, fails the run) before the run ends."""
    outcome = _epochs(s, reporter, stop_event)
    s.writer.wait()
    return outcome


def _epochs(s: Session, reporter: Reporter | None, stop_event) -> Outcome:
    """Each epoch is reported before it is saved: a worker that lost the trial (the reporter
    answers "lost", or ``stop_event`` says so) writes nothing more to the trial's outputs.
    """
    e = s.cfg.experiment
    for epoch in range(s.state.epoch + 1, e.epochs + 1):
        metrics = _run_epoch(s, epoch, stop_event)
        if metrics is None:
            return _requested(stop_event, f"during epoch {epoch}")
        answer = reporter(epoch, dict(metrics)) if reporter is not None else None
        if answer == "lost" or getattr(stop_event, "kind", None) == "lost":
            return Outcome("lost", f"this worker lost the trial after epoch {epoch}")
        _save_epoch(s, metrics, ending=epoch == e.epochs or answer == "stop")
        if epoch == e.epochs:
            break
        if answer == "stop":
            return Outcome("stopped", f"stopped by the controller after epoch {epoch}")
        if answer == "preempt":
            return Outcome("preempted", f"preempted after epoch {epoch}")
        if stop_event is not None and stop_event.is_set():
            return _requested(stop_event, f"after epoch {epoch}")
    return Outcome()


def _requested(stop_event, when: str) -> Outcome:
    kind = getattr(stop_event, "kind", None) or "preempted"
    reason = getattr(stop_event, "reason", None)
    return Outcome(kind, f"{kind} {when}" + (f": {reason}" if reason else ""))


def _run_epoch(s: Session, epoch: int, stop_event) -> dict | None:
    """Train and evaluate one epoch (saved by :func:`_save_epoch`); None when a stop request cut it short."""
    e, st = s.cfg.experiment, s.state
    t0 = time.perf_counter()
    es = epoch_seed(e.seed, epoch)
    seed_everything(es)
    s.data.generator.manual_seed(es)
    s.data.train_ds.set_epoch(epoch)
    train_m, st.global_step, interrupted = train_one_epoch(
        s.model, s.data.train_loader, s.optimizer, s.loss_fn, s.normalize, epoch=epoch, global_step=st.global_step,
        mixup=s.mixup, autocast=s.autocast, scaler=s.scaler, grad_clip=e.grad_clip,
        log_interval=s.cfg.logging.log_interval, log_fn=s.log_fn, stop_event=stop_event,
        progress=s.cfg.logging.progress)
    if interrupted:
        return None
    val_m, y_true, y_pred, _ = evaluate(s.model, s.data.val_loader, s.normalize, s.num_classes,
                                                   s.autocast)
    lr = s.optimizer.param_groups[0]["lr"]
    step_scheduler(s.scheduler, epoch, val_m)
    improved = val_m["val_f1"] > st.best_val_f1
    if improved:
        st.best_val_f1, st.best_epoch = val_m["val_f1"], epoch
        st.best_preds = (y_true.tolist(), y_pred.tolist())
    metrics = {"epoch": epoch, **train_m, **val_m, "lr": lr, "best_val_f1": st.best_val_f1}
    if s.shifted_val is not None:
        shift_m = valshift.shifted_metrics(evaluate(s.model, s.shifted_val, s.normalize, s.num_classes, s.autocast)[0])
        metrics.update(shift_m, best_val_shift_f1=valshift.best_so_far(st.history, shift_m["val_shift_f1"]))
    metrics["epoch_time"] = time.perf_counter() - t0
    st.epoch = epoch
    st.history.append(metrics)
    return metrics


def _save_epoch(s: Session, metrics: dict, ending: bool) -> None:
    """The epoch's checkpoint (best.pt when it improved), its W&B log and its log line.

    ``ending``: the run ends after this epoch (finished, or stopped); then nothing that
    keep_checkpoints would delete at the end is written, and a new best.pt is written as weights only.
    """
    e, st, epoch = s.cfg.experiment, s.state, metrics["epoch"]
    keep = s.cfg.paths.keep_checkpoints
    save_last = s.cfg.paths.save_last and not (ending and keep in ("best", "none"))
    ckpt.save_epoch(s.ckpt_dir, st.best_epoch == epoch and not (ending and keep == "none"), save_last, s.model,
                    s.optimizer, s.scheduler, s.scaler, st, s.cfg,
                    ckpt.inference_info(s.num_classes, s.data.index.class_names, s.cfg),
                    best_weights_only=ending and keep == "best", writer=s.writer)
    if s.log_fn is not None:
        s.log_fn(metrics)
    log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  val_acc %.4f  val_f1 %.4f%s  (%.1fs)", epoch, e.epochs,
             metrics["train_loss"], metrics["val_loss"], metrics["val_acc"], metrics["val_f1"],
             f"  val_shift_f1 {metrics['val_shift_f1']:.4f}" if "val_shift_f1" in metrics else "", metrics["epoch_time"])




def _release(s: Session, exc: BaseException) -> None:
    """A failed run lets go of everything it held, now: its caller may keep the exception (wandb.agent
    keeps every trial's for its life), whose traceback holds this run's frames. Loader workers shut
    down, model, optimizer and data dropped, the frames below ``train`` cleared (the traceback still
    prints; the running ``train`` frame is skipped), CUDA's cache emptied."""
    for batches in (s.data.train_loader, s.data.val_loader):
        it = getattr(batches.loader, "_iterator", None)  # persistent workers hang from their DataLoader
        if it is not None:
            it._shutdown_workers()
            batches.loader._iterator = None
    s.model = s.optimizer = s.scheduler = s.scaler = s.mixup = s.data = s.val_probs = None
    traceback.clear_frames(exc.__traceback__)
    if s.device.type == "cuda":
        torch.cuda.empty_cache()


def _owner_check(reporter: Reporter | None, stop_event) -> Callable[[], bool]:
    """Whether this process still holds the run: not when ``stop_event`` says "lost", nor when the
    reporter's ``holds()`` (a sweep controller's lease check, when the reporter has one) says no."""
    holds = getattr(reporter, "holds", None)

    def held() -> bool:
        if getattr(stop_event, "kind", None) == "lost":
            return False
        return holds() if holds is not None else True
    return held


