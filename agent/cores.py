"""Cores handed on at a sweep's end: a CPU worker that found no more work leaves its cores to one still training.

The launcher pins each CPU worker to its share of the cores. Near a sweep's end one worker
runs out of trials while another still trains its last: without a hand-over, half the
machine idles through that tail. When a pinned CPU worker exits with nothing left to do,
the launcher adds its cores to a running CPU worker's share and writes the new share to
that worker's grant file (``CVSWEEP_CPU_GRANT``, written atomically). The worker reads it
between epochs (one small read per epoch), widens the affinity of all its threads and sets torch's
thread count to its cores. A worker on a GPU keeps its share: its cores feed its loaders.

Torch-free: the launcher imports this module; torch is imported only where threads are set.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("cvsweep.cores")

ENV = "CVSWEEP_CPU_GRANT"
#: The thread counts a worker's share sets (the launcher at start, :meth:`CoreGrant.apply` on a hand-over).
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(cpus) -> dict[str, str]:
    """The thread-count variables for a share of ``cpus``."""
    return dict.fromkeys(THREAD_VARS, str(max(1, len(cpus))))


def write_grant(path: str | os.PathLike, cpus: list[int]) -> None:
    """The worker's share is now ``cpus`` (written whole: the worker never reads half a list)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(",".join(str(c) for c in sorted(cpus)) + "\n")
    os.replace(tmp, path)


class CoreGrant:
    """A worker's side: :meth:`apply` takes a new share when the launcher wrote one (else does nothing)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None

    @classmethod
    def from_env(cls, environ=os.environ) -> CoreGrant:
        return cls(environ.get(ENV) or None)

    def granted(self) -> set[int] | None:
        """The share the launcher last wrote, or None (no grant file: nothing handed on yet)."""
        if self.path is None:
            return None
        try:
            return {int(c) for c in self.path.read_text().strip().split(",") if c} or None
        except (OSError, ValueError):
            return None

    def apply(self) -> set[int] | None:
        """Widen every thread of this process to the granted share and use as many torch threads, when
        not done yet; the share, or None. Never raises: a hand-over must not fail a trial."""
        cpus = self.granted()
        if cpus is None:
            return None
        try:
            import torch  # lazy: the launcher imports this module torch-free; a worker has torch loaded

            if cpus == os.sched_getaffinity(0) and torch.get_num_threads() == len(cpus):
                return None
            os.sched_setaffinity(0, cpus)
            for tid in os.listdir("/proc/self/task"):  # sched_setaffinity(0) moved only the calling thread
                try:
                    os.sched_setaffinity(int(tid), cpus)
                except OSError:  # a thread that ended meanwhile
                    pass
            os.environ.update(thread_env(cpus))
            torch.set_num_threads(len(cpus))
        except Exception as exc:  # noqa: BLE001 - a core outside this job's cgroup, say: train where it is
            log.warning("could not take the cores %s handed on: %s", sorted(cpus), exc)
            return None
        log.info("cores handed on by a worker that finished: now on cpus %s, %d threads",
                 ",".join(map(str, sorted(cpus))), len(cpus))
        return cpus
