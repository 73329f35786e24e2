"""One worker process per GPU group. Building each worker's command and environment
is a pure function (tested without spawning); supervising them is a short loop.

Which GPUs: those this process may use (``CUDA_VISIBLE_DEVICES`` as SLURM or a
container runtime set it, else every GPU NVML sees), resolved by
:func:`cvtrain.gpus.visible_gpus` — the same function the worker's system metrics
use, so ``gpu/0`` is the card ``cuda:0`` trains on. Which cores: those in this
process's affinity (``os.sched_getaffinity``), split among the workers.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional

from cvtrain.gpus import Gpu, Visible, nvml_gpus, nvml_or_none

from . import cores

MAX_RESTARTS = 5
MAX_LOADER_WORKERS = 8  # more rarely helps with the decoded-image cache, and each costs memory


class LaunchError(ValueError):
    pass


@dataclass
class WorkerSpec:
    slot: int
    gpus: list[Gpu]
    cmd: list[str]
    env: dict = field(repr=False)  # holds WANDB_API_KEY for W&B workers: never in a log or a test's dump
    cpus: list[int] = field(default_factory=list)  # this worker's share of the allowed cores
    pin: bool = False  # confine the worker (and the processes it starts) to ``cpus``
    restarts: int = 0
    proc: Optional[subprocess.Popen] = field(default=None, repr=False)
    exit_code: Optional[int] = None


def nvml_view() -> list[Gpu]:
    """Every GPU NVML can open here ([] without an NVIDIA driver), whatever CUDA_VISIBLE_DEVICES says."""
    nvml = nvml_or_none()
    if nvml is None:
        return []
    try:
        return nvml_gpus(nvml)
    except nvml.NVMLError as exc:
        raise LaunchError(f"NVML could not list the GPUs: {exc}; use --gpus none to run on the CPU") from None
    finally:
        nvml.nvmlShutdown()


def describe_visible(visible: Visible, inherited: str | None) -> list[str]:
    """Where the GPUs come from and which they are, for the plan's header (and warnings)."""
    source = ("every GPU NVML sees (CUDA_VISIBLE_DEVICES unset)" if inherited is None
              else f"CUDA_VISIBLE_DEVICES={inherited!r} (inherited)")
    lines = [f"GPUs this process may use, from {source}: "
             + (", ".join(f"{i} = {g.describe()}" for i, g in enumerate(visible.gpus)) or "none")]
    if visible.ignored:
        lines.append(f"warning: CUDA_VISIBLE_DEVICES entries {', '.join(map(repr, visible.ignored))} name no GPU "
                     "NVML sees; CUDA ignores them (and any after them), and so do the workers")
    return lines


def parse_gpus(spec: str, visible: Visible, inherited: str | None = None) -> list[Gpu]:
    """``all`` | ``none`` | ``0,2,3`` -> the chosen GPUs; indices count the visible GPUs, as torch does."""
    spec = (spec or "all").strip().lower()
    if spec == "none":
        return []
    gpus = visible.gpus
    if spec == "all":
        return list(gpus)
    try:
        ids = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise LaunchError(f"--gpus {spec!r}: use all, none, or indices like 0,2,3") from None
    if not gpus:
        why = ("CUDA_VISIBLE_DEVICES is empty" if inherited is not None and not inherited.strip()
               else "NVML sees no GPU" if inherited is None else f"none of CUDA_VISIBLE_DEVICES={inherited!r} is a GPU here")
        raise LaunchError(f"--gpus {spec!r}: no GPU is visible to this process ({why}); use --gpus none")
    bad = [i for i in ids if i < 0 or i >= len(gpus)]
    if bad:
        where = "every GPU NVML sees" if inherited is None else f"CUDA_VISIBLE_DEVICES={inherited!r}"
        listing = ", ".join(f"{i} = GPU {g.index} ({g.uuid})" for i, g in enumerate(gpus))
        raise LaunchError(f"--gpus {spec!r}: GPU(s) {bad} not visible; indices count the {len(gpus)} GPU(s) this "
                          f"process may use ({where}): {listing}")
    if len(set(ids)) != len(ids):
        raise LaunchError(f"--gpus {spec!r}: an index appears twice")
    return [gpus[i] for i in ids]


def plan_groups(gpus: list, gpus_per_trial: int = 1, workers: int | None = None) -> list[list]:
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


def cpu_topology(cpu: int) -> tuple[int, int]:
    """(socket, physical core) of a logical CPU, from sysfs; (0, cpu) where sysfs does not say."""
    base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
    try:
        with open(base + "physical_package_id") as pkg, open(base + "core_id") as core:
            return int(pkg.read()), int(core.read())
    except (OSError, ValueError):
        return 0, cpu


def allowed_cpus(affinity: Iterable[int] | None = None,
                 topology: Callable[[int], tuple[int, int]] = cpu_topology) -> list[int]:
    """The cores this process may run on (its affinity: a SLURM task's, a container's cpuset), ordered
    socket by socket with hyperthread siblings side by side, so a contiguous share holds whole cores."""
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return sorted(affinity, key=lambda c: (*topology(c), c))


def cpu_shares(cpus: list[int], n: int) -> list[list[int]]:
    """``cpus`` cut into ``n`` contiguous shares as even as they go; fewer cores than workers: one each, shared."""
    if not cpus:
        raise LaunchError("no CPU core in this process's affinity")
    if len(cpus) < n:
        return [[cpus[i % len(cpus)]] for i in range(n)]
    size, extra = divmod(len(cpus), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(cpus[start:end])
        start = end
    return out


def loader_workers(threads: int, on_gpu: bool) -> int:
    """DataLoader processes for a worker with ``threads`` cores: on a GPU, all but the one feeding it;
    on the CPU none (the decoded-image cache makes loading cheap; loaders would fight training for cores)."""
    return min(MAX_LOADER_WORKERS, threads - 1) if on_gpu else 0


def worker_env(base: Mapping[str, str], gpus: list[Gpu], cpus: list[int], state_dir: str,
               extra: Mapping[str, str] | None = None) -> dict:
    """The child's environment: its GPUs, its share of the cores, where state and runs live."""
    env = dict(base)
    # wandb saves its service's address in os.environ once this process has used wandb (the demo's
    # write-back, say): a worker inheriting it would share that service, and a killed worker's run id
    # would stay "in use" there, so its trial could never resume. Each worker starts its own.
    env.pop("WANDB_SERVICE", None)
    env.pop(cores.ENV, None)  # a grant file is this launcher's to give (Launcher._start), not inherited
    env["CUDA_VISIBLE_DEVICES"] = ",".join(g.token for g in gpus)  # "" hides every GPU from a CPU worker
    # Indices mean PCI bus order, as NVML (and so the system metrics) number GPUs; CUDA's default,
    # fastest first, would put another card under the same index on a machine with mixed GPUs.
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    threads = max(1, len(cpus))
    env.update(cores.thread_env(cpus))
    env["CVSWEEP_DIR"] = state_dir
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("CVTRAIN_NUM_WORKERS", str(loader_workers(threads, bool(gpus))))  # a user's setting wins
    env.update(extra or {})
    return env


def worker_command(sweep_id: str, backend: str, slot: int, count: int | None = None,
                   python: str = sys.executable) -> list[str]:
    """A W&B worker's ``sweep_id`` is the sweep's full ENTITY/PROJECT/ID path."""
    cmd = [python, "-m", "agent.worker", sweep_id, "--backend", backend, "--name", f"w{slot}"]
    if count is not None:
        cmd += ["--count", str(count)]
    return cmd


def build_specs(sweep_id: str, backend: str, groups: list[list[Gpu]], base_env: Mapping[str, str], state_dir: str,
                count: int | None = None, cpus: list[int] | None = None, pin: bool = True) -> list[WorkerSpec]:
    """One spec per group; ``cpus`` (default: this process's allowed cores) split among them.

    ``pin`` confines each worker to its share, when there are enough cores for shares not to overlap.
    """
    cpus = allowed_cpus() if cpus is None else cpus
    shares = cpu_shares(cpus, len(groups))
    pin = pin and len(cpus) >= len(groups)
    return [WorkerSpec(slot=i, gpus=g, cmd=worker_command(sweep_id, backend, i, count),
                       env=worker_env(base_env, g, share, state_dir), cpus=share, pin=pin)
            for i, (g, share) in enumerate(zip(groups, shares))]


def cpu_ranges(cpus: Iterable[int]) -> str:
    """[0, 1, 2, 3, 8] -> '0-3,8'."""
    out: list[str] = []
    for c in sorted(cpus):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in out)


def plan_line(s: WorkerSpec) -> str:
    """One line saying what worker ``s`` gets: devices, cores, threads, loaders, and its command."""
    where = ", ".join(g.describe() for g in s.gpus) if s.gpus else "CPU"
    return (f"w{s.slot}: {where} | CUDA_VISIBLE_DEVICES={s.env['CUDA_VISIBLE_DEVICES']} | "
            f"{'pinned to' if s.pin else 'sharing'} cpus {cpu_ranges(s.cpus)}, {_n(s.env['OMP_NUM_THREADS'], 'thread')}, "
            f"{_n(s.env['CVTRAIN_NUM_WORKERS'], 'loader worker')} | {shlex.join(s.cmd)}")


def _n(count: str, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == "1" else "s")


def _pin_to(cpus: list[int]) -> Callable[[], None]:
    mask = set(cpus)
    return lambda: os.sched_setaffinity(0, mask)


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
        self._grants: str | None = None  # a folder of grant files (agent.cores), while run() runs

    def _start(self, s: WorkerSpec) -> None:
        # Pinned in the child between fork and exec: the worker starts on its share, so every thread
        # (BLAS's, started at numpy's import) and DataLoader process it makes inherits the mask. The
        # supervisor runs no threads of its own that a fork could catch holding a lock.
        env = s.env
        if self._takes_cores(s):  # a restart after a hand-over starts on the widened share, with its threads
            env = {**s.env, cores.ENV: self._grant_path(s), **cores.thread_env(s.cpus)}
        s.proc = subprocess.Popen(s.cmd, env=env, preexec_fn=_pin_to(s.cpus) if s.pin and s.cpus else None)
        s.exit_code = None

    def _takes_cores(self, s: WorkerSpec) -> bool:
        return self._grants is not None and s.pin and bool(s.cpus) and not s.gpus

    def _grant_path(self, s: WorkerSpec) -> str:
        return os.path.join(self._grants, f"w{s.slot}.cpus")

    def _hand_on(self, done: WorkerSpec) -> None:
        """A pinned CPU worker ended with nothing left to do (or was given up on): its cores go to the running
        CPU worker with the fewest (agent.cores), so the sweep's last trials do not train on half the machine."""
        takers = [s for s in self.specs if s.proc is not None and s.proc.poll() is None and self._takes_cores(s)]
        if not takers or not self._takes_cores(done):
            return
        to = min(takers, key=lambda s: len(s.cpus))
        widened = sorted(to.cpus + done.cpus)
        try:
            cores.write_grant(self._grant_path(to), widened)
        except OSError as exc:  # the supervisor goes on: the workers keep the cores they have
            self.echo(f"could not hand worker w{done.slot}'s cores on: {exc}")
            return
        to.cpus, freed, done.cpus = widened, done.cpus, []
        ended = "finished" if done.exit_code == 0 else "was given up on"
        self.echo(f"worker w{done.slot} {ended}: its cpus {cpu_ranges(freed)} go to w{to.slot} "
                  f"(now cpus {cpu_ranges(to.cpus)})")

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum
        for s in self.specs:
            if s.proc and s.proc.poll() is None:
                s.proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self._grants = tempfile.mkdtemp(prefix="cvsweep-cores-")
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
                    if code == 0 and self._signal is None:
                        self._hand_on(s)
                    if code != 0 and self._signal is None:
                        if s.restarts < self.max_restarts:
                            s.restarts += 1
                            self.echo(f"worker w{s.slot} exited with {code}; restarting ({s.restarts}/{self.max_restarts})")
                            time.sleep(min(30.0, 0.5 * 2 ** s.restarts))
                            self._start(s)
                            alive += 1
                        else:
                            self.echo(f"worker w{s.slot} exited with {code} {s.restarts + 1} times; giving up on it")
                            self._hand_on(s)
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
            shutil.rmtree(self._grants, ignore_errors=True)
            self._grants = None
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
