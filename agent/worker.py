"""A worker: claims trials and trains them in this process, one after another.

Local backend: the loop claims from the SQLite controller. W&B backend: the
same trial function runs inside ``wandb.agent``. Either way imports, CUDA
context and the decoded-image cache are paid once per worker, not per trial.

SIGTERM/SIGINT: the running trial stops at the next batch, is marked
preempted (its last whole-epoch checkpoint stays), and the worker exits.

Leases: a heartbeat thread extends the claim's lease every quarter of it. When the
controller has given the trial to another worker (this one was too slow, not dead),
the heartbeat or the next epoch report is refused: the trial stops at its next batch
as ``lost`` and this worker writes nothing more about it, files or records.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import sys
import threading
import traceback

from cvtrain.config import ConfigError
from cvtrain.stop import EXIT_PREEMPTED, StopRequest

from .controller import LocalController
from .cores import CoreGrant
from .settings import Settings, SettingsError, load_settings, unset_empty_wandb_vars
from .store import LeaseLost, SQLiteStore, Trial, seed_from_id
from .trial_config import local_trial_config
from .wandb_backend import SweepPathError, sweep_path_from_env
from .wandb_worker import WandbWorker

log = logging.getLogger("cvsweep.worker")


class WorkerStop:
    """The worker's stop (a signal: the running trial ends as preempted, then the worker exits),
    forwarded to the :class:`StopRequest` of the trial it runs now.

    ``set`` is safe in a signal handler: it takes no lock the interrupted thread may hold
    (StopRequest's lock is re-entrant).
    """

    def __init__(self, event: threading.Event | None = None):
        self._event = event or threading.Event()
        self.trial: StopRequest | None = None

    def set(self, reason: str = "the worker was asked to stop") -> None:
        self._event.set()
        req = self.trial
        if req is not None:
            req.set("preempted", reason)

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def new_trial(self) -> StopRequest:
        """A fresh request for the next trial; already set when the worker is stopping."""
        req = StopRequest()
        self.trial = req
        if self._event.is_set():
            req.set("preempted", "the worker was asked to stop")
        return req


def _heartbeat(ctl: LocalController, trial: Trial, stop: StopRequest, done: threading.Event) -> None:
    """Beat every quarter lease; a refused beat means another worker holds the trial now: stop it as lost."""
    while not done.wait(ctl.heartbeat_seconds):
        try:
            held = ctl.heartbeat(trial.id, trial.owner)
        except Exception:  # noqa: BLE001 - a missed beat is retried; the lease has slack for three
            log.warning("heartbeat for %s failed", trial.name, exc_info=True)
            continue
        if not held:
            log.warning("trial %s: lease lost (another worker holds it now); stopping at the next batch", trial.name)
            stop.set("lost", "the controller gave this trial to another worker (lease expired)")
            return


def _owner_writes(ctl: LocalController, trial: Trial, request: StopRequest, grant: CoreGrant | None = None):
    """The trainer's epoch reporter (with ``holds``, asked between the steps that end the trial) and the
    function that records the trial's end; each names the claim's owner, and a refusal stops the trial
    as lost."""
    owner = trial.owner

    def reporter(epoch: int, metrics: dict):
        if grant is not None:  # between epochs: cores a finished worker handed on (agent.cores)
            grant.apply()
        try:
            return ctl.report(trial.id, epoch, metrics, owner=owner)
        except LeaseLost as exc:
            log.warning("trial %s: %s", trial.name, exc)
            request.set("lost", str(exc))
            return "lost"

    def holds() -> bool:
        """Asked by the trainer between the steps that end the trial: a beat that also extends the lease."""
        try:
            held = ctl.heartbeat(trial.id, owner)
        except Exception:  # noqa: BLE001 - unknown is not lost: the finish itself is fenced
            log.warning("ownership check for %s failed", trial.name, exc_info=True)
            return True
        if not held:
            log.warning("trial %s: lease lost while ending it; leaving its outputs to the new owner", trial.name)
            request.set("lost", "the controller gave this trial to another worker (lease expired)")
        return held

    reporter.holds = holds  # the trainer's way to ask whether it still owns the trial

    def record(state: str, summary: dict | None = None, error: str | None = None) -> str:
        try:
            ctl.finish(trial.id, state, summary, error, owner=owner)
        except LeaseLost as exc:
            log.warning("trial %s ended %s here, but %s", trial.name, state, exc)
            return "lost"
        return state

    return reporter, record


def run_trial(ctl: LocalController, trial: Trial, worker: str, stop_event: WorkerStop | threading.Event,
              environ=None, grant: CoreGrant | None = None) -> str:
    """Train one claimed trial; record how it ended. Returns the state (``lost``: recorded by its new owner).

    Every write names the claim's owner: a refused report stops training as lost; a lost trial's
    outputs and ending are the new owner's to write.
    """
    from cvtrain.engine import train  # lazy: torch, timm; the worker loads them once (settle_imports)

    stops = stop_event if isinstance(stop_event, WorkerStop) else WorkerStop(stop_event)
    request = stops.new_trial()
    done = threading.Event()
    hb = threading.Thread(target=_heartbeat, args=(ctl, trial, request, done), name="cvsweep-heartbeat", daemon=True)
    hb.start()
    reporter, record = _owner_writes(ctl, trial, request, grant)
    try:
        if grant is not None:
            grant.apply()
        sweep_seed = ctl.store.get_sweep(trial.sweep_id).seed
        cfg = local_trial_config(trial, environ, env_file=None if environ is not None else ".env",
                                 split_seed=sweep_seed if sweep_seed is not None else seed_from_id(trial.sweep_id))
        result = train(cfg, reporter=reporter, resume="auto", stop_event=request, wandb_dir=trial.wandb_dir)
        if result.state == "lost":  # another worker's now: its outputs and ending are theirs to record
            return "lost"
        return record(result.state, result.summary)
    except Exception as exc:  # noqa: BLE001 - a failing trial is recorded, with its reason; the worker goes on
        msg = f"{type(exc).__name__}: {exc}"
        # One line in the agent's log, the whole reason in the store (`cvsweep runs ID --state failed`).
        log.error("trial %s failed: %s", trial.name, " / ".join(str(exc).strip().splitlines()[:3]) or msg)
        if not isinstance(exc, ConfigError):
            log.debug("%s", traceback.format_exc())
        return record("failed", error=msg)
    finally:
        done.set()
        hb.join(timeout=5)
        stops.trial = None


def local_worker_loop(sweep_id: str, worker: str, count: int | None, stop_event: WorkerStop | threading.Event,
                      poll: float = 0.5, root=None, settings: Settings | None = None) -> int:
    """Claim and train until the sweep has no more work, ``count`` trials ran, or ``stop_event`` is set."""
    settings = settings or load_settings()
    stops = stop_event if isinstance(stop_event, WorkerStop) else WorkerStop(stop_event)
    store = SQLiteStore(root or settings.state_dir, create=False)
    ctl = LocalController(store, lease_seconds=settings.lease_seconds)
    done, grant = 0, CoreGrant.from_env()
    try:
        while not stops.is_set() and (count is None or done < count):
            claim = ctl.claim(sweep_id, worker)
            if claim.status == "done":
                log.info("no more work: %s", claim.reason)
                break
            if claim.status in ("wait", "paused"):
                stops.wait(poll)
                continue
            log.info("trial %s (%s, attempt %d): %s", claim.trial.name, claim.reason, claim.trial.attempt,
                     claim.trial.params)
            state = run_trial(ctl, claim.trial, worker, stops, environ=settings.env, grant=grant)
            if state != "failed":  # a failure was logged with its reason already
                log.info("trial %s %s", claim.trial.name, state)
            done += 1
    finally:
        store.close()
    return EXIT_PREEMPTED if stops.is_set() else 0


def settle_imports(*extra: str) -> None:
    """Import what every trial needs (and the ``extra`` modules), once, then take those objects out of
    the cyclic garbage collector's walks (``gc.freeze``): with torch, timm and wandb loaded, each full
    collection walked them all (~0.2 s, measured, every few epoch reports, and in training alike)."""
    import importlib

    import wandb  # noqa: F401

    import cvtrain.engine  # noqa: F401 - torch, timm

    for name in extra:
        importlib.import_module(name)
    gc.collect()  # what is garbage now is freed, not frozen
    gc.freeze()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.worker")
    p.add_argument("sweep_id", help="local: the id; wandb: ID, PROJECT/ID or ENTITY/PROJECT/ID")
    p.add_argument("--backend", choices=("local", "wandb"), default="local")
    p.add_argument("--count", type=int, default=None)
    p.add_argument("--project")
    p.add_argument("--entity")
    p.add_argument("--name", default=None, help="worker name recorded with its trials")
    a = p.parse_args(argv)
    unset_empty_wandb_vars(os.environ)  # as the cvsweep command does: empty means not set
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{a.name or 'worker'}] %(message)s",
                        datefmt="%H:%M:%S")
    if a.backend == "wandb":
        return wandb_main(a)
    try:
        settings = load_settings()
    except SettingsError as exc:
        p.error(str(exc))
    stop = WorkerStop()

    def on_signal(signum, frame):
        log.info("signal %d: stopping the running trial at the next batch", signum)
        stop.set(f"{signal.Signals(signum).name} to the worker")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = f"{socket.gethostname()}:{os.getpid()}:{a.name or 'w'}"
    settle_imports(*_search_imports(a.sweep_id, settings))
    return local_worker_loop(a.sweep_id, worker, a.count, stop, settings=settings)


def _search_imports(sweep_id: str, settings: Settings) -> tuple[str, ...]:
    """A bayes sweep's claims fit a Gaussian process (scipy, scikit-learn): loaded before the freeze too."""
    try:
        store = SQLiteStore(settings.state_dir, create=False)
        try:
            method = store.get_sweep(sweep_id).config.get("method")
        finally:
            store.close()
    except Exception:  # noqa: BLE001 - the worker's loop says what is wrong with the sweep or the store
        return ()
    return ("sweeps.bayes_search",) if method == "bayes" else ()


def wandb_main(a) -> int:
    """A W&B-backend worker: ``wandb.agent`` in this process; SIGTERM/SIGINT preempt the running
    trial (checkpointed, marked preempting on W&B, requeued by the sweep) and the worker exits 143."""

    try:
        path = sweep_path_from_env(a.sweep_id, a.project, a.entity, os.environ)
    except SweepPathError as exc:
        log.error("%s", exc)
        return 2
    worker = WandbWorker()

    def on_signal(signum, frame):
        first = worker.preempted is None
        name = signal.Signals(signum).name
        log.info("%s: preempting the running trial; the worker exits when it has ended", name)
        worker.preempt(f"{name} to the worker")
        if first:
            # wandb.agent's own way out (as after Ctrl-C): stop handing out trials, wait for the one running.
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    settle_imports()
    return worker.run(path, a.count)


if __name__ == "__main__":
    sys.exit(main())
