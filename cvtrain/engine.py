"""The training loop: ``train(config, reporter) -> TrainResult``.

The trainer knows nothing about sweeps. ``train`` reads as its recipe: set up
(device, data, model, optimisation, resume), start the W&B run, fit epoch by
epoch, end (final reports, artifacts, summary). A reporter, when given, is
called after every epoch with that epoch's metrics and may answer ``"stop"``
(the sweep ends the run early: finished, with its real metric and its best
checkpoint), ``"preempt"`` or ``"lost"``. A :class:`~cvtrain.stop.StopRequest`
set from another thread or a signal handler ends the run at the next batch the
same ways; ``last.pt`` of the last whole epoch is what ``--resume`` continues from.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import threading
import time
import traceback
import warnings
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
from .loader import DeviceBatches, batch_loader
from .metrics import confusion, epoch_metrics, per_class_report, save_confusion_png
from .model import build_model, model_stats
from .norm import IMAGENET, model_data_config
from .notices import say_once
from .split import split_record
from .stop import EXIT_PREEMPTED, StopRequest
from .system import SystemMonitor, environment_info
from .tracking import create_run_name, finish_run, in_wandb_sweep, init_wandb, mark_preempting, save_model_artifact
from .validation import validate_config

log = logging.getLogger(__name__)

Reporter = Callable[[int, dict], Optional[str]]
SUMMARY_KEYS = ("best_val_f1", "val_f1", "val_acc", "train_loss", "val_loss", "params_total",
                "params_trainable", "flops", "epoch_time", "state")


class NonFiniteLossError(RuntimeError):
    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(f"loss became {value} at epoch {epoch}, global step {step}: the run stops as failed. "
                         "Lower learning_rate, add warmup_epochs or grad_clip, or turn amp off.")


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


# ---------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    # Reseeding from (seed, epoch) at every epoch start makes a resumed run draw
    # the same mixup/dropout/shuffle numbers as an uninterrupted one.
    return (seed * 1_000_003 + epoch * 7919) % 2**31


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError([f"device={name!r}: CUDA is not available on this machine; use device=auto or cpu"])
    return torch.device(name)


class Normalizer(nn.Module):
    """uint8 NCHW batch -> normalised float on the device (cheaper than per-sample on the CPU), with
    the mean/std of ``data_config`` (:mod:`cvtrain.norm`; default ImageNet's)."""

    def __init__(self, device, channels_last: bool, data_config: dict | None = None):
        super().__init__()
        self.data_config = dict(data_config or IMAGENET)
        self.mean = torch.tensor(self.data_config["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(self.data_config["std"], device=device).view(1, 3, 1, 1) * 255
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.mean.device, non_blocking=True).float()
        x = (x - self.mean) / self.std
        # Batches arrive NCHW or as NCHW views of the cache's NHWC rows: give the model one layout.
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


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


def build_optimization(cfg: Config, model: nn.Module, num_classes: int):
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    e = cfg.experiment
    optimizer = create_optimizer_v2(model, opt=e.optimizer.lower(), lr=e.learning_rate,
                                    weight_decay=e.weight_decay, momentum=e.momentum)
    scheduler = None
    if e.scheduler != "none":
        scheduler, _ = create_scheduler_v2(optimizer, sched=e.scheduler, num_epochs=e.epochs,
                                           warmup_epochs=e.warmup_epochs, warmup_lr=e.warmup_lr,
                                           min_lr=e.min_lr, decay_epochs=max(1, e.epochs // 3),
                                           step_on_epochs=True, plateau_mode=PLATEAU_MODE)
    mixup = None
    if e.mixup.alpha > 0 or e.mixup.cutmix_alpha > 0:
        mixup = Mixup(mixup_alpha=e.mixup.alpha, cutmix_alpha=e.mixup.cutmix_alpha, prob=e.mixup.prob,
                      switch_prob=e.mixup.switch_prob, label_smoothing=e.label_smoothing, num_classes=num_classes)
        train_loss = SoftTargetCrossEntropy()
    else:
        train_loss = nn.CrossEntropyLoss(label_smoothing=e.label_smoothing)
    return optimizer, scheduler, mixup, train_loss


#: What ``scheduler=plateau`` watches, and its direction: the validation macro-F1, higher is better.
PLATEAU_METRIC, PLATEAU_MODE = "val_f1", "max"


def step_scheduler(scheduler, epoch: int, val_metrics: dict) -> None:
    """The schedule after ``epoch``; ``plateau`` lowers the rate only when told the metric (val_f1)."""
    from timm.scheduler import PlateauLRScheduler

    if isinstance(scheduler, PlateauLRScheduler):
        scheduler.step(epoch, val_metrics[PLATEAU_METRIC])
    elif scheduler is not None:
        scheduler.step(epoch)


def amp_context(cfg: Config, device: torch.device):
    """(autocast factory, grad scaler): amp empty means on where the device supports it (CUDA)."""
    e = cfg.experiment
    if e.amp and device.type != "cuda":
        say_once(log, "amp=True has no effect on %s; training in float32", device.type)
    if not (e.amp if e.amp is not None else device.type == "cuda") or device.type != "cuda":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if e.amp_dtype == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


# ---------------------------------------------------------------------------
def train_one_epoch(model, loader, optimizer, loss_fn, normalize, *, epoch: int, global_step: int,
                    mixup=None, autocast=contextlib.nullcontext, scaler=None, grad_clip=None,
                    log_interval: int = 20, log_fn=None, stop_event: threading.Event | None = None,
                    progress: bool = False) -> tuple[dict, int, bool]:
    """One pass over ``loader``. Returns (metrics, global_step, interrupted)."""
    from tqdm.auto import tqdm

    model.train()
    device = normalize.mean.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, unit="batch")
    for i, (x, y) in enumerate(bar):
        if stop_event is not None and stop_event.is_set():
            return {}, global_step, True
        x = normalize(x)
        y = y.to(device, non_blocking=True)
        target = y
        if mixup is not None:
            x, target = mixup(x, y)
        with autocast():
            out = model(x)
            loss = loss_fn(out, target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        global_step += 1
        ld = loss.detach()
        # No host sync per batch: sums and the first bad step stay on the device.
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(ld), torch.tensor(global_step, device=device), first_bad)
        loss_sum += ld.float() * y.shape[0]
        correct += (out.detach().argmax(1) == y).sum()
        seen += y.shape[0]
        if global_step % log_interval == 0 or i == len(loader) - 1:
            bad = int(first_bad)
            if bad >= 0:
                raise NonFiniteLossError(epoch, bad, float("nan") if math.isnan(ld.item()) else ld.item())
            if log_fn is not None and global_step % log_interval == 0:
                log_fn({"batch/loss": ld.item(), "global_step": global_step})
    if seen == 0:
        return {"train_loss": float("nan"), "train_acc": float("nan")}, global_step, False
    return {"train_loss": float(loss_sum) / seen, "train_acc": float(correct) / seen}, global_step, False


@torch.no_grad()
def evaluate(model, loader, normalize, num_classes: int, autocast=contextlib.nullcontext):
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total, n = 0.0, 0
    probs, labels = [], []
    for x, y in loader:
        x = normalize(x)
        y = y.to(x.device)
        with autocast():
            out = model(x)
        total += float(loss_fn(out.float(), y))
        n += y.shape[0]
        probs.append(torch.softmax(out.float(), dim=1).cpu())
        labels.append(y.cpu())
    y_true = torch.cat(labels).numpy() if labels else np.zeros(0, dtype=int)
    p = torch.cat(probs).numpy() if probs else np.zeros((0, num_classes), dtype=np.float32)
    y_pred = p.argmax(1) if len(p) else np.zeros(0, dtype=int)
    m = epoch_metrics(y_true, y_pred)
    return {"val_loss": total / max(n, 1), "val_acc": m["acc"], "val_f1": m["f1"]}, y_true, y_pred, p


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

    @property
    def log_fn(self):
        return None if self.run is None or self.run.disabled else self.run.log


@dataclass
class Outcome:
    state: str = "finished"          # finished | stopped | preempted | lost
    reason: Optional[str] = None


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
            _end_failed(s, exc, _owner_check(reporter, stop_event))
        finally:
            _release(s, exc)
        raise
    return _end(s, outcome, _owner_check(reporter, stop_event))


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
    from .predict import decode_test_set  # predict imports this module: imported where used

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
    """Epochs from the resumed one to the last, unless the reporter or ``stop_event`` ends them.

    Each epoch is reported before it is saved: a worker that lost the trial (the reporter
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
                    best_weights_only=ending and keep == "best")
    if s.log_fn is not None:
        s.log_fn(metrics)
    log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  val_acc %.4f  val_f1 %.4f%s  (%.1fs)", epoch, e.epochs,
             metrics["train_loss"], metrics["val_loss"], metrics["val_acc"], metrics["val_f1"],
             f"  val_shift_f1 {metrics['val_shift_f1']:.4f}" if "val_shift_f1" in metrics else "", metrics["epoch_time"])


def _end_failed(s: Session, exc: BaseException, held: Callable[[], bool] = lambda: True) -> None:
    """The run's own error: summary.json and the W&B run say failed, with the reason (unless another
    worker holds the trial now: its outputs are that worker's)."""
    reason = f"{type(exc).__name__}: {exc}"
    summary = _summary(s.state, s.stats, "failed", reason, s.monitor.stop())
    if not held():
        finish_run(s.run, 1)
        return
    if isinstance(exc, Exception):  # an interrupt (KeyboardInterrupt) may be resumed: keep last.pt
        _retain_checkpoints(s)
    _write_json(s.out_dir / "summary.json", summary)
    _summary_to_run(s.run, summary)
    finish_run(s.run, 1)


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


def _end(s: Session, outcome: Outcome, held: Callable[[], bool] = lambda: True) -> TrainResult:
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
    """The final epoch's model: softmax on its held-out images (cvtrain.heldout) and, when the data has
    a test set, on the test images with the ``tta`` views. Finalize builds OOF estimates and the
    ensemble from these files; the final epoch (not the best) keeps the OOF estimate honest."""
    from .heldout import write_heldout_predictions, write_probs  # lazy: both import predict, which imports this module
    from .predict import test_probs

    e, d = s.cfg.experiment, s.cfg.data
    write_heldout_predictions(s.model, s.data.val_ds.images, s.data.index, s.data.val_ds.indices,
                              D.holdout_indices(s.data.index.labels, d)[1], list(e.tta), s.normalize,
                              e.batch_size * 2, s.out_dir)
    root = Path(d.data_dir)
    if not (root / d.sample_submission).is_file():
        log.info("no %s in %s: no test predictions", d.sample_submission, root)
        return
    with warnings.catch_warnings():  # unreadable test images were named at setup (check_test_set)
        warnings.simplefilter("ignore", UserWarning)
        _, test_ids, probs = test_probs(s.model, root, e.img_size, d.resize, list(e.tta), s.device,
                                        test_dir=d.test_dir, sample_submission=d.sample_submission,
                                        cache_dir=d.cache_dir, batch_size=e.batch_size * 2,
                                        skip_bad_images=d.skip_bad_images, data_config=s.normalize.data_config)
    write_probs(s.out_dir / "test_predictions.csv", ["ID"], [(i,) for i in test_ids], probs.numpy())


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
    import wandb

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
