"""One trial's trainer config, the same way for both backends.

defaults < .env/environment < the sweep's split seed < the trial's sweep parameters < what the
worker fixes per trial. The local worker gives the parameters the controller chose and the run's
identity; the W&B worker gives the parameters ``wandb.agent`` wrote (``WANDB_SWEEP_PARAM_PATH``).
The API key is never written: the local worker's environment (``Settings.env``) has none, and the
trainer keeps a key it finds out of every config and file it writes (``cvtrain.config.SECRET_FIELDS``).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from cvtrain.config import mapping_layer, resolve
from cvtrain.layers import env_layer, merged_env, sweep_layer
from cvtrain.split import split_seed_from_sweep_id

from .store import Trial

Layer = Mapping[str, tuple[Any, str]]


def trial_config(sweep_id: str | None, params: Layer, *, split_seed: int | None, environ=None,
                 env_file: str | None = ".env", fixed: Mapping[str, Any] | None = None, local: bool = True,
                 check_model: bool = False, seed_source: str | None = None):
    """The config of one trial of sweep ``sweep_id`` with the sweep parameters ``params`` (a layer).

    ``environ``: the resolved settings' environment (``Settings.env``: .env merged already, no API
    key; then ``env_file`` is None), or os.environ. ``split_seed``: the sweep's seed, so that every
    trial validates on the same images whatever its ``seed`` (a sweep parameter ``split_seed`` wins).
    ``local``: every trial is a W&B offline run tagged with its sweep (``cvsweep sync`` uploads it).
    """
    environ = dict(os.environ if environ is None else environ)
    shared = {} if split_seed is None else {
        "split_seed": (split_seed, seed_source or f"sweep {sweep_id}'s seed")}
    fixed = {"job_type": "sweep-trial", "progress": False, **(fixed or {})}
    cfg = resolve(env_layer(merged_env(environ, env_file)), shared, dict(params),
                  mapping_layer(fixed, "controller" if local else "worker"), check_model=check_model)
    if local:
        cfg.wandb.tags = list(dict.fromkeys([*cfg.wandb.tags, "cvsweep", f"sweep-{sweep_id}"]))
        if cfg.wandb.mode is None or cfg.wandb.mode == "online":
            cfg.wandb.mode = "offline"  # local controller: every trial is an offline run, `cvsweep sync` uploads
    return cfg


def local_trial_config(trial: Trial, environ=None, env_file: str | None = ".env", split_seed: int | None = None):
    """A claimed trial of a local sweep: the controller's parameters and the run's identity."""
    fixed = {"output_dir": trial.output_dir, "run_name": trial.name, "run_id": trial.run_id,
             "group": trial.sweep_id,
             # One environment for every trial of a worker: its versions are in each run's config (env).
             "save_requirements": False}
    return trial_config(trial.sweep_id, mapping_layer(trial.params, "sweep"), split_seed=split_seed,
                        environ=environ, env_file=env_file, fixed=fixed)


def wandb_trial_config(environ=None):
    """The trial ``wandb.agent`` is running in this process: its parameters are in the file
    ``WANDB_SWEEP_PARAM_PATH`` names; the split seed derives from ``WANDB_SWEEP_ID``, so every
    machine of the sweep validates on the same images."""
    env = os.environ if environ is None else environ
    sweep_id = env.get("WANDB_SWEEP_ID")
    return trial_config(sweep_id, sweep_layer(env.get("WANDB_SWEEP_PARAM_PATH")),
                        split_seed=split_seed_from_sweep_id(sweep_id) if sweep_id else None,
                        seed_source=f"sweep {sweep_id}", environ=environ, local=False, check_model=True)
