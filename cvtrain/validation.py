"""Validation of a resolved configuration: every problem at once, each naming field, value, source, allowed.

Imports nothing of :mod:`cvtrain.config` (which calls it from ``resolve``): the allowed values live here.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import transforms, weights
from .checks import check_model_name, close_matches, input_size_problem
from .tta import TTA_VIEWS

if TYPE_CHECKING:
    from .config import Config

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "nadam", "radam", "rmsprop", "lamb", "lion")
SCHEDULERS = ("cosine", "step", "multistep", "plateau", "poly", "tanh", "none")
WANDB_MODES = ("online", "offline", "disabled")
AMP_DTYPES = ("bf16", "fp16")
RESIZE_MODES = ("pad", "stretch")
KEEP_CHECKPOINTS = ("best", "last", "all", "none")
DEVICES = ("auto", "cpu", "cuda")
AUGMENT_ON = ("device", "cpu")
#: Settings whose value never appears in a message, a log or a file.
SECRET_FIELDS = frozenset({"api_key"})


def safe_repr(name: str, value: Any) -> str:
    return "<hidden>" if name in SECRET_FIELDS else repr(value)


def validate_config(cfg: Config, check_model: bool = True) -> list[str]:
    problems: list[str] = []

    def bad(name: str, allowed: str, value: Any = None) -> None:
        v = cfg.get(name) if value is None else value
        problems.append(f"{name}={safe_repr(name, v)} (from {cfg.sources.get(name, 'default')}): {allowed}")

    _check_choices(cfg, bad)
    _check_numbers(cfg, bad)
    problems += transforms.check(dataclasses.asdict(cfg.experiment.augment), cfg.sources.get("augment"))
    problems += _check_mixup(cfg, bad)
    for v in cfg.experiment.tta:
        if v not in TTA_VIEWS:
            bad("tta", f"unknown view {v!r}; allowed: {', '.join(TTA_VIEWS)}")
    _check_data(cfg, bad)
    problems += _check_pretrained(cfg, bad)
    if check_model:
        problems += validate_model_name(cfg)
    return problems


def _check_choices(cfg: Config, bad) -> None:
    """Settings that take one of a list of words."""
    e, d, w = cfg.experiment, cfg.data, cfg.wandb
    if w.mode is not None and w.mode not in WANDB_MODES:
        bad("mode", f"allowed: {', '.join(WANDB_MODES)}")
    if e.optimizer.lower() not in OPTIMIZERS:
        bad("optimizer", f"allowed: {', '.join(OPTIMIZERS)}{close_matches(e.optimizer, OPTIMIZERS)}")
    if e.scheduler.lower() not in SCHEDULERS:
        bad("scheduler", f"allowed: {', '.join(SCHEDULERS)}{close_matches(e.scheduler, SCHEDULERS)}")
    if e.amp_dtype not in AMP_DTYPES:
        bad("amp_dtype", f"allowed: {', '.join(AMP_DTYPES)}")
    if e.device not in DEVICES and not e.device.startswith("cuda:"):
        bad("device", f"allowed: {', '.join(DEVICES)} or cuda:N")
    if d.resize not in RESIZE_MODES:
        bad("resize", f"allowed: {', '.join(RESIZE_MODES)}")
    if cfg.paths.keep_checkpoints not in KEEP_CHECKPOINTS:
        bad("keep_checkpoints", f"allowed: {', '.join(KEEP_CHECKPOINTS)}{close_matches(cfg.paths.keep_checkpoints, KEEP_CHECKPOINTS)}")
    if d.augment_on not in AUGMENT_ON:
        bad("augment_on", f"allowed: {', '.join(AUGMENT_ON)}{close_matches(d.augment_on, AUGMENT_ON)}")


def _check_numbers(cfg: Config, bad) -> None:
    """The training numbers' ranges."""
    e = cfg.experiment
    for name, lo in (("img_size", 16), ("batch_size", 1), ("epochs", 1), ("log_interval", 1)):
        if cfg.get(name) < lo:
            bad(name, f"must be >= {lo}")
    if e.num_classes is not None and e.num_classes < 2:
        bad("num_classes", "must be >= 2 (or empty to infer from the data)")
    if not (0 < e.learning_rate < 10):
        bad("learning_rate", "must be > 0 and < 10")
    for name in ("weight_decay", "warmup_lr", "min_lr", "drop_rate"):
        if cfg.get(name) < 0:
            bad(name, "must be >= 0")
    if e.warmup_epochs < 0 or (e.epochs >= 1 and e.warmup_epochs >= e.epochs):
        bad("warmup_epochs", f"must be >= 0 and < epochs ({e.epochs})")
    if not (0 <= e.label_smoothing < 1):
        bad("label_smoothing", "must be in [0, 1)")
    if e.grad_clip is not None and e.grad_clip <= 0:
        bad("grad_clip", "must be > 0 or empty")


def _check_mixup(cfg: Config, bad) -> list[str]:
    e, m = cfg.experiment, cfg.experiment.mixup
    problems = []
    if m.alpha < 0 or m.cutmix_alpha < 0:
        problems.append(f"mixup={dataclasses.asdict(m)} (from {cfg.sources.get('mixup')}): alphas must be >= 0")
    if not (0 <= m.prob <= 1 and 0 <= m.switch_prob <= 1):
        problems.append(f"mixup={dataclasses.asdict(m)} (from {cfg.sources.get('mixup')}): prob and switch_prob must be in [0, 1]")
    if (m.alpha > 0 or m.cutmix_alpha > 0) and e.batch_size % 2:
        bad("batch_size", f"must be even with mixup/cutmix (mixup={dataclasses.asdict(m)} from "
                          f"{cfg.sources.get('mixup')} pairs each image with another of its batch); "
                          f"use {e.batch_size + 1}" + (f" or {e.batch_size - 1}" if e.batch_size > 1 else ""))
    return problems


def _check_data(cfg: Config, bad) -> None:
    """The split, the loader and the monitor."""
    d = cfg.data
    if not (0 < d.val_fraction < 1) and d.folds <= 1:
        bad("val_fraction", "must be in (0, 1)")
    if not (0 <= d.holdout < 0.5):
        bad("holdout", "must be in [0, 0.5)")
    if d.folds == 1 or d.folds < 0:
        bad("folds", "must be 0 (plain split) or >= 2")
    if d.folds >= 2 and not (0 <= d.fold < d.folds):
        bad("fold", f"must be in [0, {d.folds - 1}] for folds={d.folds}")
    if d.num_workers < 0:
        bad("num_workers", "must be >= 0")
    if cfg.logging.system_interval <= 0:
        bad("system_interval", "must be > 0 seconds")


def _check_pretrained(cfg: Config, bad) -> list[str]:
    """One file or one folder of pretrained weights, that exists (and holds the model's, when used)."""
    e = cfg.experiment
    if e.pretrained_path and not Path(e.pretrained_path).is_file():
        bad("pretrained_path", "file does not exist")
    if e.pretrained_dir and e.pretrained_path:
        bad("pretrained_dir", "pretrained_path is set too: give one file or one folder")
    elif e.pretrained_dir and not Path(e.pretrained_dir).is_dir():
        bad("pretrained_dir", "folder does not exist")
    elif e.pretrained and e.pretrained_dir:
        return weights.problems(e.pretrained_dir, e.model_name, cfg.sources.get("pretrained_dir"))
    return []


def validate_model_name(cfg: Config) -> list[str]:
    """A timm model name, and an img_size the model can take (some take one size only)."""
    e = cfg.experiment
    problems = check_model_name(e.model_name, cfg.sources.get("model_name"))
    size = None if problems else input_size_problem(e.model_name, e.img_size, f"from {cfg.sources.get('model_name')}",
                                                    f"from {cfg.sources.get('img_size')}")
    return problems + ([size] if size else [])


