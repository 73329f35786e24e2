"""W&B is the one tracking system: init, names, artifacts and finish live here.

Modes online, offline and disabled all go through the same calls. The API key
is handed to W&B through its settings object, never through the run config,
the environment of this process, or a file.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from .config import Config

log = logging.getLogger(__name__)

#: Logged once per epoch on the `epoch` axis; a sweep's metric must be one of these.
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1", "lr", "epoch_time", "best_val_f1")


def create_run_name(cfg: Config) -> str:
    """A readable, filesystem-safe name: ``resnet34-lr1e-03-bs32-224px-s42``."""
    e = cfg.experiment
    name = f"{e.model_name}-lr{e.learning_rate:.0e}-bs{e.batch_size}-{e.img_size}px-s{e.seed}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def in_wandb_sweep(environ=os.environ) -> bool:
    """True when started by `wandb agent` (the CLI agent sets these for the child)."""
    return bool(environ.get("WANDB_SWEEP_ID")) and bool(environ.get("WANDB_SWEEP_PARAM_PATH"))


def init_wandb(cfg: Config, extra_config: dict | None = None, *, run_name: str | None = None,
               resume: bool = False, wandb_dir: str | os.PathLike | None = None):
    """Start the run for ``cfg`` and declare its metrics; returns the wandb Run."""
    import wandb

    w = cfg.wandb
    settings: dict[str, Any] = {"silent": True, "x_save_requirements": w.save_requirements}
    if w.api_key:
        settings["api_key"] = w.api_key
    config = {**cfg.to_flat_dict(), **(extra_config or {})}
    kwargs: dict[str, Any] = dict(
        project=w.project, entity=w.entity, group=w.group, job_type=w.job_type,
        tags=list(w.tags) or None, name=run_name or w.run_name or create_run_name(cfg),
        mode=cfg.wandb_mode, config=config, settings=wandb.Settings(**settings),
        reinit="finish_previous",
    )
    if wandb_dir is not None:
        Path(wandb_dir).mkdir(parents=True, exist_ok=True)
        kwargs["dir"] = str(wandb_dir)
    if w.run_id:
        kwargs["id"] = w.run_id
        kwargs["resume"] = "allow" if resume else None
    run = wandb.init(**{k: v for k, v in kwargs.items() if v is not None})
    define_metrics(run)
    return run


def define_metrics(run) -> None:
    """Step axes and summaries: epoch metrics on `epoch`, batch loss on `global_step`."""
    run.define_metric("epoch")
    run.define_metric("global_step")
    run.define_metric("sys/elapsed_s")
    run.define_metric("batch/*", step_metric="global_step")
    for name in EPOCH_METRICS:
        run.define_metric(name, step_metric="epoch")
    run.define_metric("val_f1", step_metric="epoch", summary="max,last")
    run.define_metric("val_acc", step_metric="epoch", summary="max,last")
    run.define_metric("val_loss", step_metric="epoch", summary="min,last")
    run.define_metric("sys/*", step_metric="sys/elapsed_s")
    run.define_metric("gpu/*", step_metric="sys/elapsed_s")


def save_model_artifact(run, path: str | os.PathLike, *, aliases: list[str], metadata: dict,
                        name: str | None = None):
    """Log a checkpoint file as a W&B model artifact (offline runs keep it for `wandb sync`)."""
    import wandb

    if run is None or run.disabled:
        return None
    art = wandb.Artifact(name or f"model-{run.id}", type="model", metadata=_jsonable(metadata))
    # "immutable": W&B references the checkpoint where it is instead of copying it into its
    # staging area (a copy per trial filled gigabytes under ~/.local/share/wandb in a sweep).
    # Checkpoints are replaced atomically, never written in place, so the reference stays valid.
    art.add_file(str(path), name=Path(path).name, policy="immutable")
    return run.log_artifact(art, aliases=aliases)


def finish_run(run, exit_code: int = 0) -> None:
    if run is not None:
        run.finish(exit_code=exit_code)


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if hasattr(v, "item"):
            v = v.item()
        out[k] = v
    return out
