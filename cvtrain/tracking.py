"""W&B is the one tracking system: credentials, init, names, artifacts and finish live here.

Modes online, offline and disabled all go through the same calls. Whether a
run is online is decided the way wandb itself decides (:func:`wandb_access`):
credentials from the environment, ``.env``, ``~/.netrc`` (``wandb login``) or
wandb's settings files. The API key is handed to W&B through its settings
object, never through the run config, the environment of this process, a log
line or a file.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .config import Config, ConfigError
from .layers import merged_env
from .notices import say_once

log = logging.getLogger(__name__)

#: Logged once per epoch on the `epoch` axis; a sweep's metric must be one of these.
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1", "lr", "epoch_time", "best_val_f1",
                 # with val_shift on (cvtrain.valshift): the same figures on the shifted validation copies
                 "val_shift_loss", "val_shift_acc", "val_shift_f1", "best_val_shift_f1")


# ---------------------------------------------------------------------------
# Credentials and mode, as wandb decides them
# ---------------------------------------------------------------------------
MODES = ("online", "offline", "disabled")


class AccessError(ConfigError):
    """W&B was asked for online but cannot be reached as configured (never names the key)."""

    def __init__(self, message: str):
        super().__init__([message])


@dataclass(frozen=True)
class WandbAccess:
    """How this process reaches W&B: the mode, the server, and where the credentials come from."""
    mode: str                          # online | offline | disabled
    base_url: str
    key_source: str | None             # "env WANDB_API_KEY", "/home/me/.netrc", ...; None: no credentials
    reason: str                        # one line for the log: why this mode
    api_key: str | None = field(default=None, repr=False)  # set only when wandb must be handed it (.env)


def wandb_settings(environ: Mapping[str, str]):
    """wandb's own settings as a fresh wandb process would load them: settings files, then ``WANDB_*``."""
    import wandb  # lazy: wandb's import is slow; the agent's checks and runs without W&B never pay it

    s = wandb.Settings()
    config_dir = environ.get("WANDB_CONFIG_DIR")
    s.settings_system = str(Path(config_dir).expanduser() / "settings") if config_dir else str(
        Path("~", ".config", "wandb", "settings").expanduser())
    s.silent = True  # reading them is no news worth printing
    try:
        s.update_from_system_settings()
        s.update_from_env_vars({k: v for k, v in environ.items() if k.startswith("WANDB_")})
    except ValueError as exc:  # pydantic's ValidationError: a bad WANDB_* value
        raise AccessError(f"W&B settings: {exc}") from None
    return s


def find_credentials(base_url: str, settings=None) -> tuple[str | None, str | None]:
    """``(api_key, source)`` for ``base_url`` from wandb's settings, else ``~/.netrc``; ``(None, None)``.

    wandb's own netrc reader decides (machine ``host:port`` when the URL has a port).
    """
    # lazy: wandb's import is slow; the agent's checks and runs without W&B never pay it
    from wandb.errors import AuthenticationError
    from wandb.sdk.lib import wbauth

    if settings is not None and settings.api_key and str(settings.base_url).rstrip("/") == base_url.rstrip("/"):
        return settings.api_key, "wandb settings"
    if settings is not None and getattr(settings, "identity_token_file", None):
        return None, f"identity token file {settings.identity_token_file}"
    try:
        found = wbauth.wbnetrc.read_netrc_auth_with_source(host=wbauth.HostUrl(base_url))
    except AuthenticationError as exc:
        raise AccessError(f"the netrc entry for {base_url} is not a usable W&B API key ({exc}); "
                          f"run `wandb login --relogin --host={base_url}`") from None
    if found is None:
        return None, None
    return found.auth.api_key, found.source


def wandb_access(requested_mode: str | None = None, api_key: str | None = None, base_url: str | None = None,
                 environ: Mapping[str, str] | None = None, key_source: str = "WANDB_API_KEY",
                 mode_source: str = "WANDB_MODE") -> WandbAccess:
    """Decide online/offline/disabled as wandb would, for a process with ``environ``.

    ``requested_mode``/``api_key``/``base_url`` are what our own settings say (command line,
    environment, .env); wandb's settings files and ``~/.netrc`` fill in the rest. Online when
    credentials exist for the server and no mode says otherwise; offline without credentials
    unless online was asked for explicitly (then :class:`AccessError`, naming the fix).
    """
    environ = os.environ if environ is None else environ
    settings = wandb_settings(environ)
    url = (base_url or str(settings.base_url)).rstrip("/")
    mode = (requested_mode or "").strip().lower() or None
    if mode is None and settings.mode in ("offline", "dryrun", "disabled"):
        mode, requested_from = settings.mode, "wandb settings"
    else:
        requested_from = mode_source
    if mode == "dryrun":
        mode = "offline"
    if mode == "run":
        mode = "online"
    if mode is not None and mode not in MODES:
        raise AccessError(f"mode={mode!r}: allowed: {', '.join(MODES)}")
    if mode in ("offline", "disabled"):
        return WandbAccess(mode, url, None, f"mode {mode} (from {requested_from})")
    if api_key:
        key, source = api_key, key_source
    else:
        key, source = find_credentials(url, settings)
    if key or source:  # an identity token file has a source and no key
        return WandbAccess("online", url, source, f"W&B credentials for {url} from {source}", api_key=api_key)
    where = "WANDB_API_KEY (environment or .env), ~/.netrc (`wandb login`), wandb settings"
    if mode == "online":
        host = "" if url == str(type(settings)().base_url).rstrip("/") else f" --host={url}"
        raise AccessError(f"mode=online but no W&B credentials for {url} ({where}). "
                          f"Run `wandb login{host}` or set WANDB_API_KEY in .env")
    return WandbAccess("offline", url, None, f"no W&B credentials for {url} ({where})")


_offline_sweep_warned = threading.Event()


def warn_offline_in_sweep(access: WandbAccess, environ: Mapping[str, str]) -> bool:
    """Under a W&B sweep an offline run starves the sweep: say so loudly, once per process."""
    if access.mode == "online" or not environ.get("WANDB_SWEEP_ID") or _offline_sweep_warned.is_set():
        return False
    _offline_sweep_warned.set()
    log.warning("\n%s\nThis trial of W&B sweep %s runs %s: %s.\nThe sweep receives no metrics from it "
                "(bayes learns nothing, hyperband stops nothing). Run `wandb login` on this machine, or set "
                "WANDB_API_KEY, and start the agent again.\n%s", "!" * 78, environ["WANDB_SWEEP_ID"],
                access.mode.upper(), access.reason, "!" * 78)
    return True


# ---------------------------------------------------------------------------
def create_run_name(cfg: Config, run_id: str | None = None) -> str:
    """A readable, filesystem-safe name: ``resnet34-lr0.00123-bs32-224px-s42``.

    With ``run_id`` (a W&B sweep's trial) the id is appended: display names stay unique
    within a sweep even when two trials draw the same rounded values.
    """
    e = cfg.experiment
    name = f"{e.model_name}-lr{e.learning_rate:.3g}-bs{e.batch_size}-{e.img_size}px-s{e.seed}"
    if run_id:
        name += f"-{run_id}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def in_wandb_sweep(environ=os.environ) -> bool:
    """True when started by `wandb agent` (the CLI agent sets these for the child)."""
    return bool(environ.get("WANDB_SWEEP_ID")) and bool(environ.get("WANDB_SWEEP_PARAM_PATH"))


def access_for(cfg: Config, environ: Mapping[str, str] | None = None) -> WandbAccess:
    """:func:`wandb_access` for a resolved trainer config (its mode, key and server come from CLI/env/.env)."""
    w = cfg.wandb
    return wandb_access(w.mode, w.api_key, w.base_url, environ,
                        key_source=str(cfg.sources.get("api_key", "WANDB_API_KEY")),
                        mode_source=str(cfg.sources.get("mode", "WANDB_MODE")))


def init_wandb(cfg: Config, extra_config: dict | None = None, *, run_name: str | None = None,
               resume: bool = False, wandb_dir: str | os.PathLike | None = None,
               environ: Mapping[str, str] | None = None):
    """Start the run for ``cfg`` and declare its metrics; returns the wandb Run."""
    import wandb  # lazy: wandb's import is slow; the agent's checks and runs without W&B never pay it

    environ = os.environ if environ is None else environ
    w = cfg.wandb
    access = access_for(cfg, environ)
    say_once(log, "W&B %s: %s", access.mode, access.reason)
    warn_offline_in_sweep(access, environ)
    settings: dict[str, Any] = {"silent": True, "x_save_requirements": w.save_requirements,
                                "base_url": access.base_url}
    if access.api_key:
        settings["api_key"] = access.api_key
    sweep_run_id = environ.get("WANDB_RUN_ID") if in_wandb_sweep(environ) else None
    config = {**cfg.to_flat_dict(), **(extra_config or {})}
    kwargs: dict[str, Any] = dict(
        project=w.project, entity=w.entity, group=w.group, job_type=w.job_type,
        tags=list(w.tags) or None, name=run_name or w.run_name or create_run_name(cfg, sweep_run_id),
        mode=access.mode, config=config, settings=wandb.Settings(**settings),
        reinit="finish_previous",
    )
    if wandb_dir is not None:
        Path(wandb_dir).mkdir(parents=True, exist_ok=True)
        kwargs["dir"] = str(wandb_dir)
    if w.run_id:
        kwargs["id"] = w.run_id
    if resume and (w.run_id or sweep_run_id):
        kwargs["resume"] = "allow"
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
    run.define_metric("val_shift_f1", step_metric="epoch", summary="max,last")
    run.define_metric("val_acc", step_metric="epoch", summary="max,last")
    run.define_metric("val_loss", step_metric="epoch", summary="min,last")
    run.define_metric("sys/*", step_metric="sys/elapsed_s")
    run.define_metric("gpu/*", step_metric="sys/elapsed_s")


def save_model_artifact(run, path: str | os.PathLike, *, aliases: list[str], metadata: dict,
                        name: str | None = None):
    """Log a checkpoint file as a W&B model artifact (offline runs keep it for `wandb sync`).

    The artifact references a hard link frozen for this epoch (``checkpoints/logged/``), never
    ``last.pt`` itself: a resumed run replaces ``last.pt``, and an offline run's artifact must
    still match its recorded digest when ``wandb sync`` uploads it later.
    """
    import wandb  # lazy: wandb's import is slow; the agent's checks and runs without W&B never pay it

    if run is None or run.disabled:
        return None
    frozen = frozen_checkpoint(Path(path), metadata.get("epoch"))
    art = wandb.Artifact(name or f"model-{run.id}", type="model", metadata=_jsonable(metadata))
    # "immutable": W&B references the file where it is instead of copying it into its staging area;
    # skip_cache: wandb-core does not copy each upload into ~/.cache/wandb either (a copy per trial
    # filled gigabytes in a sweep).
    art.add_file(str(frozen), name=Path(path).name, policy="immutable", skip_cache=True)
    return run.log_artifact(art, aliases=aliases)


def frozen_checkpoint(path: Path, epoch) -> Path:
    """``<dir>/logged/<stem>-epoch<N><suffix>``: a hard link to ``path`` (a copy where links fail).

    Checkpoints are replaced atomically (a new inode), so the link keeps this epoch's bytes
    for as long as an artifact may need them; an existing link for the epoch is reused.
    """
    out = path.parent / "logged" / f"{path.stem}-epoch{epoch if epoch is not None else 'x'}{path.suffix}"
    out.parent.mkdir(exist_ok=True)
    if out.exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, out)
    return out


def mark_preempting(run) -> None:
    """Tell W&B this run is being preempted: with a non-zero exit a sweep requeues it."""
    if run is not None and not run.disabled:
        run.mark_preempting()


def finish_run(run, exit_code: int = 0) -> None:
    if run is not None:
        run.finish(exit_code=exit_code)


def failed_before_run(exc: BaseException) -> bool:
    """True for the errors ``train()`` raises before it starts the W&B run (config, data, weights)."""
    # lazy: both import torch; this module stays torch-free for the agent (cvsweep validate)
    from .data import DataError
    from .model import PretrainedWeightsError

    return isinstance(exc, (ConfigError, DataError, PretrainedWeightsError, FileNotFoundError)) and not isinstance(
        exc, AccessError)


def record_failed_run(reason: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Under a W&B sweep, a trial that failed before its run started still owes the sweep a run:
    start it (wandb takes id, project and parameters from the agent) only to record why it failed.
    Returns the run id, or None when W&B is not reachable as configured."""
    import wandb  # lazy: wandb's import is slow; the agent's checks and runs without W&B never pay it

    environ = merged_env(os.environ if environ is None else environ)  # .env's key, mode and server too
    try:
        access = wandb_access(environ.get("WANDB_MODE"), environ.get("WANDB_API_KEY"), environ.get("WANDB_BASE_URL"),
                              environ)
    except AccessError:
        return None
    if access.mode == "disabled":
        return None
    settings: dict[str, Any] = {"silent": True, "x_save_requirements": False, "base_url": access.base_url}
    if access.api_key:
        settings["api_key"] = access.api_key
    run = wandb.init(mode=access.mode, job_type="sweep-trial", reinit="finish_previous",
                     settings=wandb.Settings(**settings))
    run.summary.update({"state": "failed", "stopped": False, "reason": reason})
    run_id = run.id
    run.finish(exit_code=1)
    return run_id


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if hasattr(v, "item"):
            v = v.item()
        out[k] = v
    return out
