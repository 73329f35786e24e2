"""A worker that runs a W&B sweep's trials in this process with ``wandb.agent`` (the local
backend's worker is :mod:`agent.worker`); both build a trial's config with
:func:`agent.trial_config.trial_config`."""
from __future__ import annotations

import os
import threading
import time
import traceback
from typing import Callable, Mapping

from cvtrain.stop import EXIT_PREEMPTED, StopRequest
from cvtrain.tracking import failed_before_run, record_failed_run

from .cores import CoreGrant
from .trial_config import wandb_trial_config
from .wandb_backend import SweepPath


class WandbWorker:
    """Runs a W&B sweep's trials in this process with ``wandb.agent``; one trial at a time.

    wandb stops a trial by injecting a bare ``Exception`` into the thread that runs the
    trial function, wherever it is. So training runs in its own thread; the agent's thread
    only waits, and turns the injected exception into a ``stopped`` request. A signal
    (SIGTERM/SIGINT from our launcher or a cluster) is a preemption: :meth:`preempt`.
    """

    def __init__(self, train_fn: Callable | None = None, environ: Mapping[str, str] | None = None,
                 poll: float = 0.1):
        self._StopRequest = StopRequest
        self.train_fn = train_fn
        self.environ = environ
        self.poll = poll
        self.current = None              # the running trial's StopRequest
        self.preempted: str | None = None
        self.last_result = None          # the last trial's TrainResult, or its error (TrialFailed)
        self._lock = threading.Lock()
        # Cores a finished worker hands on (agent.cores), taken between epochs.
        self.grant = CoreGrant.from_env(os.environ if environ is None else environ)

    def preempt(self, reason: str) -> None:
        with self._lock:
            self.preempted = self.preempted or reason
            if self.current is not None:
                self.current.set("preempted", reason)

    def _run_training(self, stop, box: dict, done: threading.Event) -> None:
        try:
            # wandb.agent wrote this trial's parameters to WANDB_SWEEP_PARAM_PATH: the sweep layer reads them.
            cfg = wandb_trial_config(self.environ)
            if self.train_fn is None:
                from cvtrain.engine import train  # lazy: torch loads in the trial's thread, not at import

                box["result"] = train(cfg, self._between_epochs, resume="auto", stop_event=stop)
            else:
                box["result"] = self.train_fn(cfg, resume="auto", stop_event=stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the agent's thread, which re-raises it
            # Only its words go on: wandb.agent keeps what the trial raises for its whole life, and this
            # exception's traceback holds the trial's frames (model, optimizer, loaders and their workers).
            box["error"] = (type(exc).__name__, str(exc), isinstance(exc, KeyboardInterrupt))
            _record_failure_if_no_run(exc)
            traceback.clear_frames(exc.__traceback__)
        finally:
            done.set()

    def _between_epochs(self, epoch: int, metrics: dict) -> None:
        """The trainer's reporter under W&B (the sweep hears the run's own logs): only takes handed-on cores."""
        self.grant.apply()

    def trial(self) -> None:
        """The function ``wandb.agent`` calls; keep it small: wandb's exception may land on any line.

        It waits on an Event, never in ``Thread.join``: on Python < 3.13 an exception raised inside
        ``join`` marks the joined thread stopped while it still runs (bpo-45274's cleanup), and
        wandb would then finish the run under the training's feet.
        """
        stop = box = t = None
        done = threading.Event()
        self._agent_thread = threading.current_thread()
        try:
            stop, box = self._StopRequest(), {}
            with self._lock:
                self.current = stop
                if self.preempted:
                    stop.set("preempted", self.preempted)
            t = threading.Thread(target=self._run_training, args=(stop, box, done), name="cvsweep-trial",
                                 daemon=True)
            t.start()
        except Exception:  # noqa: BLE001 - wandb's stop arrived before training began
            if stop is not None:
                stop.set("stopped", "the W&B sweep stopped this run before it began")
            deadline = time.monotonic() + 5  # it may have landed inside start(): is the thread running?
            while t is not None and not (t.is_alive() or done.is_set()) and time.monotonic() < deadline:
                time.sleep(0.05)
            if t is None or not (t.is_alive() or done.is_set()):
                return
        while box is not None:
            try:
                while not done.wait(self.poll):
                    pass
                break
            except Exception:  # noqa: BLE001 - wandb.agent's stop (hyperband, stop, cancel) lands here
                stop.set("stopped", "the W&B sweep stopped this run")
        with self._lock:
            self.current = None
        if box is None:
            return
        if "error" in box:
            self.last_result = detached_error(*box["error"])
            raise detached_error(*box["error"])
        self.last_result = box.get("result")

    def run(self, path: SweepPath, count: int | None = None) -> int:
        """``wandb.agent`` until the sweep has no more work, ``count`` trials, or a signal (then 143)."""
        import wandb  # lazy: importing this module (`cvsweep agent --help`) stays fast

        try:
            wandb.agent(path.id, function=self.trial, count=count, project=path.project, entity=path.entity)
        except KeyboardInterrupt:
            pass  # our signal handler's way of making wandb.agent leave
        t = getattr(self, "_agent_thread", None)
        if t is not None and t is not threading.current_thread():
            t.join()  # the preempted trial checkpoints and finishes its run before the worker exits
        return EXIT_PREEMPTED if self.preempted else 0


class TrialFailed(Exception):
    """A trial's error as words only (``TypeName: message``), holding none of the trial's frames."""


class TrialInterrupted(KeyboardInterrupt):
    """A KeyboardInterrupt inside a trial, detached the same way (wandb.agent leaves on it)."""


def detached_error(type_name: str, message: str, interrupt: bool = False) -> BaseException:
    text = f"{type_name}: {message}" if message else type_name
    return TrialInterrupted(text) if interrupt else TrialFailed(text)


def _record_failure_if_no_run(exc: BaseException) -> None:
    """A trial that failed before its W&B run started (bad config, missing data): record why on W&B."""
    if failed_before_run(exc):
        record_failed_run(f"{type(exc).__name__}: {exc}")
