"""Optimisation of a run: timm's optimizer, schedule, mixup and loss, and mixed precision."""
from __future__ import annotations

import contextlib
import logging

import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import PlateauLRScheduler, create_scheduler_v2
from torch import nn

from .config import Config
from .notices import say_once

log = logging.getLogger(__name__)


def build_optimization(cfg: Config, model: nn.Module, num_classes: int):
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

