"""cvsweep's own settings, resolved once: the environment over ``.env`` over the defaults.

The CLI resolves them when it starts and passes the one :class:`Settings` down;
a worker process resolves the same way from the environment its launcher built
(which names every resolved value explicitly). Nothing here writes to
``os.environ``: the W&B API key stays in :attr:`Settings.api_key` and goes only
into the environments built for the child processes that need it
(:meth:`Settings.child_env` with ``with_key=True``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

#: Every default in one place.
DEFAULT_STATE_DIR = ".cvsweep"
DEFAULT_LEASE_SECONDS = 60.0
KEY_VAR = "WANDB_API_KEY"


class SettingsError(ValueError):
    """A setting with a value the tools cannot use; the message names it, where it came from and the fix."""


@dataclass(frozen=True)
class Settings:
    state_dir: Path                          # CVSWEEP_DIR: database, trial outputs, offline runs
    lease_seconds: float                     # CVSWEEP_LEASE_SECONDS: a claim's lease without a heartbeat
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # environment over .env, without the key
    api_key: str | None = field(default=None, repr=False)

    @property
    def project(self) -> str | None:
        return self.env.get("WANDB_PROJECT") or None

    @property
    def entity(self) -> str | None:
        return self.env.get("WANDB_ENTITY") or None

    def child_env(self, base: Mapping[str, str] | None = None, with_key: bool = False) -> dict:
        """A child's environment: ``base`` (this process's), the resolved cvsweep settings, and the
        key only when ``with_key`` (W&B-backend workers, ``wandb sync``)."""
        env = dict(os.environ if base is None else base)
        env.pop(KEY_VAR, None)
        # .env's W&B settings (a W&B Server's WANDB_BASE_URL above all) under the environment's: a child
        # talking to W&B must reach the server the key belongs to.
        env.update({k: v for k, v in self.env.items() if k.startswith("WANDB_") and k not in env})
        env["CVSWEEP_DIR"] = str(self.state_dir.resolve())
        env["CVSWEEP_LEASE_SECONDS"] = repr(self.lease_seconds)
        if with_key and self.api_key:
            env[KEY_VAR] = self.api_key
        return env


def unset_empty_wandb_vars(environ) -> list[str]:
    """Remove every empty ``WANDB_*`` from ``environ`` (the program's own ``os.environ``, at its start):
    ``WANDB_MODE=`` is how many shells "unset" it, and wandb rejects an empty mode or URL with a
    validation dump. Returns the names removed."""
    empty = [k for k, v in environ.items() if _empty_wandb(k, v)]
    for k in empty:
        del environ[k]
    return empty


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | os.PathLike | None = ".env") -> Settings:
    """Resolve once. ``environ`` defaults to ``os.environ``; ``env_file`` is read, never exported."""
    # lazy: the trainer's settings module loads when settings do, not for `cvsweep --help`
    from cvtrain.layers import merged_env

    environ = os.environ if environ is None else environ
    merged = merged_env(environ, env_file)
    key = merged.get(KEY_VAR) or None
    source = "environment" if environ.get("CVSWEEP_LEASE_SECONDS") else str(env_file)
    lease_text = merged.get("CVSWEEP_LEASE_SECONDS") or ""
    lease = DEFAULT_LEASE_SECONDS
    if lease_text.strip():
        try:
            lease = float(lease_text)
        except ValueError:
            lease = float("nan")
        if not math.isfinite(lease) or lease <= 0:
            raise SettingsError(f"CVSWEEP_LEASE_SECONDS={lease_text!r} (from {source}): must be a number of "
                                f"seconds > 0, e.g. {DEFAULT_LEASE_SECONDS:g}")
    return Settings(state_dir=Path(merged.get("CVSWEEP_DIR") or DEFAULT_STATE_DIR), lease_seconds=lease,
                    env={k: v for k, v in merged.items() if k != KEY_VAR and not _empty_wandb(k, v)}, api_key=key)


def _empty_wandb(name: str, value: str) -> bool:
    return name.startswith("WANDB_") and not str(value).strip()
