"""One worker process per GPU group. Building each worker's command and environment
is a pure function (tested without spawning); supervising them is a short loop.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

MAX_RESTARTS = 5


class LaunchError(ValueError):
    pass


@dataclass
class WorkerSpec:
    slot: int
    gpus: list[int]
    cmd: list[str]
    env: dict
    restarts: int = 0
    proc: Optional[subprocess.Popen] = field(default=None, repr=False)
    exit_code: Optional[int] = None


def gpu_count() -> int:
    """GPUs NVML sees (0 without a driver); CUDA_VISIBLE_DEVICES already set narrows nothing here."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound and friends: no GPU
        return 0


def parse_gpus(spec: str, available: int) -> list[int]:
    """``all`` | ``none`` | ``0,2,3`` -> GPU indices."""
    spec = (spec or "all").strip().lower()
    if spec == "none":
        return []
    if spec == "all":
        return list(range(available))
    try:
        ids = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise LaunchError(f"--gpus {spec!r}: use all, none, or indices like 0,2,3") from None
    bad = [i for i in ids if i < 0 or i >= available]
    if bad:
        raise LaunchError(f"--gpus {spec!r}: GPU(s) {bad} not present; this machine has {available} "
                          f"(indices 0-{available - 1})" if available else f"--gpus {spec!r}: this machine has no GPU; use --gpus none")
    if len(set(ids)) != len(ids):
        raise LaunchError(f"--gpus {spec!r}: an index appears twice")
    return ids


def plan_groups(gpus: list[int], gpus_per_trial: int = 1, workers: int | None = None) -> list[list[int]]:
    """Split GPUs into disjoint groups of ``gpus_per_trial``; with no GPU, ``workers`` CPU groups."""
    if gpus_per_trial < 1:
        raise LaunchError("--gpus-per-trial must be >= 1")
    if not gpus:
        return [[] for _ in range(max(1, workers or 1))]
    if len(gpus) < gpus_per_trial:
        raise LaunchError(f"--gpus-per-trial {gpus_per_trial} but only {len(gpus)} GPU(s) selected")
    groups = [gpus[i:i + gpus_per_trial] for i in range(0, len(gpus) - gpus_per_trial + 1, gpus_per_trial)]
    if workers is not None:
        if workers > len(groups):
            raise LaunchError(f"--workers {workers}: only {len(groups)} GPU group(s) of {gpus_per_trial}")
        groups = groups[:workers]
    return groups


def worker_env(base: Mapping[str, str], gpus: list[int], n_workers: int, cpu_count: int, state_dir: str,
               extra: Mapping[str, str] | None = None) -> dict:
    """The child's environment: its GPUs, its share of CPU threads, where state and runs live."""
    env = dict(base)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)  # "" hides every GPU from a CPU worker
    threads = max(1, cpu_count // max(1, n_workers))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["CVSWEEP_DIR"] = state_dir
    env.setdefault("PYTHONUNBUFFERED", "1")
    if not gpus:
        # The decoded-image cache makes loading cheap; loader processes would fight training for cores.
        env.setdefault("CVTRAIN_NUM_WORKERS", "0")
    env.update(extra or {})
    return env


def worker_command(sweep_id: str, backend: str, slot: int, count: int | None = None,
                   project: str | None = None, entity: str | None = None, python: str = sys.executable) -> list[str]:
    cmd = [python, "-m", "agent.worker", sweep_id, "--backend", backend, "--name", f"w{slot}"]
    if count is not None:
        cmd += ["--count", str(count)]
    if project:
        cmd += ["--project", project]
    if entity:
        cmd += ["--entity", entity]
    return cmd


def build_specs(sweep_id: str, backend: str, groups: list[list[int]], base_env: Mapping[str, str], state_dir: str,
                count: int | None = None, project: str | None = None, entity: str | None = None,
                cpu_count: int | None = None) -> list[WorkerSpec]:
    cpu = cpu_count or os.cpu_count() or 1
    return [WorkerSpec(slot=i, gpus=g, cmd=worker_command(sweep_id, backend, i, count, project, entity),
                       env=worker_env(base_env, g, len(groups), cpu, state_dir))
            for i, g in enumerate(groups)]


class Launcher:
    """Starts the workers, restarts one that dies, forwards SIGTERM/SIGINT, reports progress."""

    def __init__(self, specs: list[WorkerSpec], progress: Callable[[], None] | None = None,
                 poll: float = 0.2, max_restarts: int = MAX_RESTARTS, grace: float = 120.0, echo=print,
                 progress_every: float = 1.0):
        self.specs = specs
        self.progress = progress
        self.poll = poll  # short: the sweep ends as soon as its last worker does
        self.progress_every = progress_every
        self.max_restarts = max_restarts
        self.grace = grace
        self.echo = echo
        self._signal: int | None = None

    def _start(self, s: WorkerSpec) -> None:
        s.proc = subprocess.Popen(s.cmd, env=s.env)
        s.exit_code = None

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum
        for s in self.specs:
            if s.proc and s.proc.poll() is None:
                s.proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for s in self.specs:
                self._start(s)
            next_progress = 0.0
            while True:
                alive = 0
                for s in self.specs:
                    if s.proc is None:
                        continue
                    code = s.proc.poll()
                    if code is None:
                        alive += 1
                        continue
                    s.exit_code, s.proc = code, None
                    if code != 0 and self._signal is None:
                        if s.restarts < self.max_restarts:
                            s.restarts += 1
                            self.echo(f"worker w{s.slot} exited with {code}; restarting ({s.restarts}/{self.max_restarts})")
                            time.sleep(min(30.0, 0.5 * 2 ** s.restarts))
                            self._start(s)
                            alive += 1
                        else:
                            self.echo(f"worker w{s.slot} exited with {code} {s.restarts + 1} times; giving up on it")
                if self.progress and time.monotonic() >= next_progress:
                    self.progress()
                    next_progress = time.monotonic() + self.progress_every
                if alive == 0:
                    break
                if self._signal is not None:
                    self._wait_for_exit()
                    break
                time.sleep(self.poll)
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
        if self.progress:
            self.progress()
        if self._signal is not None:
            return 128 + self._signal
        return 0 if all(s.exit_code == 0 for s in self.specs) else 1

    def _wait_for_exit(self) -> None:
        deadline = time.monotonic() + self.grace
        for s in self.specs:
            if s.proc is None:
                continue
            try:
                s.exit_code = s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.exit_code = s.proc.wait()
