"""A worker: claims trials and trains them in this process, one after another.

Local backend: the loop claims from the SQLite controller. W&B backend: the
same trial function runs inside ``wandb.agent``. Either way imports, CUDA
context and the decoded-image cache are paid once per worker, not per trial.

SIGTERM/SIGINT: the running trial stops at the next batch, is marked
preempted (its last whole-epoch checkpoint stays), and the worker exits.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import traceback

from cvtrain.config import ConfigError, env_layer, mapping_layer, merged_env, resolve
from cvtrain.stop import EXIT_PREEMPTED, StopRequest

from .controller import LocalController
from .store import SQLiteStore, Trial

log = logging.getLogger("cvsweep.worker")


def trial_config(trial: Trial, sweep_id: str, environ=None, env_file: str | None = ".env"):
    """defaults < .env/environment < the trial's sweep parameters < what the controller fixes per trial."""
    environ = dict(os.environ if environ is None else environ)
    fixed = {"output_dir": trial.output_dir, "run_name": trial.name, "run_id": trial.run_id, "group": sweep_id,
             "job_type": "sweep-trial", "progress": False,
             # One environment for every trial of a worker: its versions are in each run's config (env).
             "save_requirements": False}
    tags = ["cvsweep", f"sweep-{sweep_id}"]
    cfg = resolve(env_layer(merged_env(environ, env_file)), mapping_layer(trial.params, "sweep"),
                  mapping_layer(fixed, "controller"))
    cfg.wandb.tags = list(dict.fromkeys([*cfg.wandb.tags, *tags]))
    if cfg.wandb.mode is None or cfg.wandb.mode == "online":
        cfg.wandb.mode = "offline"  # local controller: every trial is an offline run, `cvsweep sync` uploads
    return cfg


def run_trial(ctl: LocalController, trial: Trial, worker: str, stop_event: threading.Event) -> str:
    """Train one claimed trial; record how it ended. Returns the recorded state."""
    from cvtrain.engine import train

    beat_stop = threading.Event()

    def beat():
        while not beat_stop.wait(ctl.lease / 4):
            try:
                ctl.heartbeat(trial.id, worker)
            except Exception:  # noqa: BLE001 - a missed beat is retried; the lease has slack
                log.warning("heartbeat for %s failed", trial.name, exc_info=True)

    hb = threading.Thread(target=beat, name="cvsweep-heartbeat", daemon=True)
    hb.start()
    try:
        cfg = trial_config(trial, trial.sweep_id)
        result = train(cfg, reporter=lambda epoch, m: ctl.report(trial.id, epoch, m, worker),
                       resume="auto", stop_event=stop_event, wandb_dir=trial.wandb_dir)
        if result.state != "lost":  # a lost trial is another worker's now: its ending is theirs to record
            ctl.finish(trial.id, result.state, result.summary)
        return result.state
    except ConfigError as exc:
        ctl.finish(trial.id, "failed", error=f"ConfigError: {exc}")
        return "failed"
    except Exception as exc:  # noqa: BLE001 - a failing trial is recorded; the worker goes on
        msg = f"{type(exc).__name__}: {exc}"
        log.error("trial %s failed: %s", trial.name, msg)
        log.debug("%s", traceback.format_exc())
        ctl.finish(trial.id, "failed", error=msg)
        return "failed"
    finally:
        beat_stop.set()
        hb.join(timeout=5)


def local_worker_loop(sweep_id: str, worker: str, count: int | None, stop_event: threading.Event,
                      poll: float = 2.0, root=None) -> int:
    store = SQLiteStore(root, create=False)
    ctl = LocalController(store)
    done = 0
    while not stop_event.is_set() and (count is None or done < count):
        claim = ctl.claim(sweep_id, worker)
        if claim.status == "done":
            log.info("no more work: %s", claim.reason)
            break
        if claim.status in ("wait", "paused"):
            stop_event.wait(poll)
            continue
        log.info("trial %s (%s): %s", claim.trial.name, claim.reason, claim.trial.params)
        state = run_trial(ctl, claim.trial, worker, stop_event)
        log.info("trial %s %s", claim.trial.name, state)
        done += 1
    store.close()
    return EXIT_PREEMPTED if stop_event.is_set() else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.worker")
    p.add_argument("sweep_id", help="local: the id; wandb: ID, PROJECT/ID or ENTITY/PROJECT/ID")
    p.add_argument("--backend", choices=("local", "wandb"), default="local")
    p.add_argument("--count", type=int, default=None)
    p.add_argument("--project")
    p.add_argument("--entity")
    p.add_argument("--name", default=None, help="worker name recorded with its trials")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{a.name or 'worker'}] %(message)s",
                        datefmt="%H:%M:%S")
    if a.backend == "wandb":
        return wandb_main(a)
    stop = StopRequest()

    def on_signal(signum, frame):
        log.info("signal %d: stopping the running trial at the next batch", signum)
        stop.set("preempted", f"{signal.Signals(signum).name} to the worker")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = f"{socket.gethostname()}:{os.getpid()}:{a.name or 'w'}"
    return local_worker_loop(a.sweep_id, worker, a.count, stop)


def wandb_main(a) -> int:
    """A W&B-backend worker: ``wandb.agent`` in this process; SIGTERM/SIGINT preempt the running
    trial (checkpointed, marked preempting on W&B, requeued by the sweep) and the worker exits 143."""
    from .wandb_backend import SweepPathError, WandbWorker, sweep_path_from_env

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
    return worker.run(path, a.count)


if __name__ == "__main__":
    sys.exit(main())
