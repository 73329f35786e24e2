"""The layers a configuration is resolved from: environment, .env file, YAML config file, sweep parameters.

Each layer is ``{key: (value, source)}``; :func:`cvtrain.config.resolve` applies them in order.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import yaml
from dotenv import dotenv_values

from .config import ENV_PREFIX, GROUPS, KNOWN_KEYS, RUN_FACT_KEYS, WANDB_ENV, ConfigError


def env_layer(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Values from an environment mapping (os.environ merged over .env)."""
    out = {}
    for name in KNOWN_KEYS:
        var = WANDB_ENV.get(name, ENV_PREFIX + name.upper())
        if var in environ and environ[var] != "":
            out[name] = (environ[var], f"env {var}")
    return out


def read_env_file(path: str | os.PathLike | None = ".env") -> dict[str, str]:
    """Read a dotenv file without touching os.environ."""
    if path is None or not Path(path).is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def merged_env(environ: Mapping[str, str], env_file: str | os.PathLike | None = ".env") -> dict[str, str]:
    """The settings the tools read: the environment over the .env file (os.environ untouched)."""
    return {**read_env_file(env_file), **environ}


def file_layer(path: str | os.PathLike) -> dict[str, tuple[Any, str]]:
    """Values from a YAML config file: flat keys, or grouped under the group names."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"--config: file {str(p)!r} does not exist"])
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"--config: {p} is not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"--config: {p} must hold a mapping of settings, got {type(data).__name__}"])
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if k in GROUPS and isinstance(v, dict):
            flat.update(v)
        else:
            flat[k] = v
    return {k: (v, f"file {p}") for k, v in flat.items()}


def sweep_layer(param_path: str | os.PathLike | None) -> dict[str, tuple[Any, str]]:
    """Sweep parameters from the YAML file ``wandb agent`` writes ({name: {value: v}})."""
    if not param_path or not Path(param_path).is_file():
        return {}
    data = yaml.safe_load(Path(param_path).read_text()) or {}
    out = {}
    for k, v in data.items():
        if k.startswith("_") or k == "wandb_version" or k in RUN_FACT_KEYS:
            continue
        out[k] = (v["value"] if isinstance(v, dict) and "value" in v else v, "sweep")
    return out


