"""Which backend holds a sweep, and how this process reaches W&B: resolved once per command.

The CLI calls these with the :class:`~agent.settings.Settings` it resolved; tests call them
directly. Errors are the library's own (:class:`AccessProblem`, :class:`StoreError`,
:class:`SweepPathError`); the CLI turns them into one line and an exit code.
"""
from __future__ import annotations

import contextlib
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, ContextManager

from cvtrain.tracking import AccessError
from cvtrain.tracking import wandb_access as access

from .settings import KEY_VAR, Settings
from .store import RunStore, SQLiteStore, StoreError
from .wandb_backend import WandbStore, full_path, sweep_path_from_env


class AccessProblem(RuntimeError):
    """W&B cannot be reached as asked; the message names the fix."""


class WandbUnreachable(AccessProblem):
    """Credentials, but no route to the server (a cluster's compute node): the fix is the local backend."""


#: How long one reachability check may take, name lookup included. wandb's own client retries
#: for ~20 s before it gives up with a traceback; an answer of any kind here means a route exists.
REACH_SECONDS = 3.0


def check_reachable(url: str, timeout: float = REACH_SECONDS) -> None:
    """One bounded request to W&B's base URL before any wandb call; :class:`WandbUnreachable` when it
    gets no answer. Any HTTP answer (even 404) is a route. The request runs in a daemon thread so a
    name lookup that hangs is bounded too."""
    outcome: dict = {}

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url.rstrip("/") + "/", method="GET"), timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # the server answered
        except (OSError, ValueError) as exc:  # URLError, refused, timed out, no such host, bad URL
            outcome["why"] = str(getattr(exc, "reason", exc))
        outcome["done"] = True

    t = threading.Thread(target=probe, name="cvsweep-wandb-reach", daemon=True)
    t.start()
    t.join(timeout)
    why = outcome.get("why") or (None if outcome.get("done") else f"no answer within {timeout:g} s")
    if why:
        raise WandbUnreachable(f"W&B at {url} is unreachable ({why}); use --backend local "
                               "(or WANDB_MODE=offline) to sweep offline")


def ensure_reachable(s: Settings) -> None:
    """:func:`check_reachable` for the server this process's wandb would talk to."""
    check_reachable(wandb_access(s, mode="online").base_url)


@dataclass
class OpenSweep:
    backend: str          # local | wandb
    store: RunStore
    key: str              # what the store's methods take: the local id, or W&B's entity/project/id


def wandb_access(s: Settings, mode: str | None = None):
    """How wandb would reach W&B from here (environment, .env, ~/.netrc, wandb settings)."""

    try:
        return access(mode if mode is not None else s.env.get("WANDB_MODE"), s.api_key, s.env.get("WANDB_BASE_URL"),
                      s.env)
    except AccessError as exc:
        raise AccessProblem(exc.problems[0]) from None


def default_backend(s: Settings) -> tuple[str, str]:
    """(backend, why): wandb when W&B credentials are found and the mode is online, else local."""
    acc = wandb_access(s)
    return ("wandb" if acc.mode == "online" else "local"), acc.reason


@contextlib.contextmanager
def wandb_call_env(s: Settings):
    """For wandb's in-process calls that read the key and server only from the environment
    (``wandb.sweep``, ``wandb.Api``, write-back's ``wandb.init``): .env's values are there for the
    call and gone after it. Children get environments built for them (``Settings.child_env``)."""
    values = {KEY_VAR: s.api_key, "WANDB_BASE_URL": s.env.get("WANDB_BASE_URL")}
    added = {k: v for k, v in values.items() if v and not os.environ.get(k)}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def local_store(s: Settings, create: bool = False) -> SQLiteStore:
    return SQLiteStore(s.state_dir, create=create)


def open_sweep(s: Settings, sweep_id: str, project: str | None = None, entity: str | None = None,
               backend: str | None = None, enter: Callable[[ContextManager], object] | None = None) -> OpenSweep:
    """The sweep's backend and store: local when the local store has the id, else W&B (``backend``
    forces one). ``enter`` keeps :func:`wandb_call_env` open for as long as the caller uses a W&B store
    (the CLI passes its context's ``with_resource``)."""

    root_db = s.state_dir / "cvsweep.db"
    local_miss = None
    if backend == "local":
        store = local_store(s)
        store.get_sweep(sweep_id)  # StoreError names the sweeps there are
        return OpenSweep("local", store, sweep_id)
    if backend is None and root_db.exists() and "/" not in sweep_id and not (project or entity):
        store = local_store(s)
        try:
            store.get_sweep(sweep_id)
            return OpenSweep("local", store, sweep_id)
        except StoreError as exc:
            local_miss = str(exc)
    try:
        wandb_access(s, mode="online")  # reading W&B needs credentials, whatever mode runs use
    except AccessProblem as exc:
        raise AccessProblem(f"{local_miss or f'no local sweep {sweep_id!r} in {root_db.parent}'}; "
                            f"and to look it up on W&B: {exc}") from None
    try:
        ensure_reachable(s)
    except WandbUnreachable as exc:
        if local_miss is None:
            raise
        raise WandbUnreachable(f"{local_miss}; and to look it up on W&B: {exc}") from None
    if enter is not None:
        enter(wandb_call_env(s))
    path = sweep_path_from_env(sweep_id, project, entity, s.env)
    store = WandbStore(project=path.project, entity=path.entity)
    return OpenSweep("wandb", store, str(full_path(path, store.api)))
