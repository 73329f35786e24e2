"""How a run is asked to end early, from another thread or a signal handler.

Three kinds, one vocabulary with the sweep tools:

- ``stopped``: the sweep ended the trial early (hyperband, stop, cancel). The run
  ends cleanly with its real metric and its final reports; it is finished.
- ``preempted``: the machine or the user took the worker away. The last whole
  epoch's checkpoint stays for ``--resume=auto``.
- ``lost``: this worker no longer owns the trial (its lease was given to another
  worker). The run ends without writing anything more to the trial's outputs.

No heavy imports here: the CLI and signal handlers use it before torch loads.
"""
from __future__ import annotations

import os
import signal
import threading

import psutil

KINDS = ("stopped", "preempted", "lost")


class StopRequest:
    """A thread-safe, set-once request to end a run; a drop-in for ``threading.Event``.

    ``set()`` with no arguments means preempted, as a bare Event did. The first
    request wins: a later one (say SIGTERM after a sweep stop) does not change it.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.RLock()  # re-entrant: set() may run in a signal handler on a thread inside set()
        self.kind: str | None = None
        self.reason: str | None = None

    def set(self, kind: str = "preempted", reason: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"stop kind {kind!r}; allowed: {', '.join(KINDS)}")
        with self._lock:
            if self.kind is None:
                self.kind, self.reason = kind, reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def __repr__(self) -> str:
        return f"StopRequest({self.kind or 'not set'}{': ' + self.reason if self.reason else ''})"


#: Exit code of a preempted run (128 + SIGTERM): non-zero, so a W&B sweep requeues a run marked preempting.
EXIT_PREEMPTED = 143


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _is_wandb_agent(pid: int) -> bool:
    """The process ``pid`` is W&B's CLI agent (``wandb agent ...``)."""
    try:
        cmd = " ".join(psutil.Process(pid).cmdline())
    except Exception:  # noqa: BLE001 - gone already, or not ours to read: not provably the agent
        return False
    return "wandb" in cmd and " agent" in cmd


def classify_signal(signum: int, sender_pid: int, agent_pid: int | None) -> tuple[str, str]:
    """(kind, reason) for a signal: SIGTERM from the ``wandb agent`` that started us is the sweep's stop.

    The CLI agent stops a run (hyperband, ``stop``, ``cancel``) with SIGTERM; a cluster or a user
    preempting the job sends SIGTERM (or Ctrl-C's SIGINT) from elsewhere.
    """
    name = _signal_name(signum)
    if agent_pid and signum == signal.SIGTERM and (sender_pid == agent_pid or _is_wandb_agent(sender_pid)):
        return "stopped", f"the W&B sweep stopped this run ({name} from wandb agent, pid {sender_pid})"
    return "preempted", f"{name} from pid {sender_pid}" if sender_pid else name


class SignalWatch:
    """SIGTERM/SIGINT set a :class:`StopRequest`; which kind depends on who sent the signal.

    Outside a W&B sweep (``agent_pid`` None) every such signal preempts, through ordinary handlers.
    Under ``wandb agent`` the sender matters, and only ``sigwaitinfo`` tells it: both signals are
    blocked in every thread (call :meth:`start` in the main thread before any other thread
    exists) and one thread waits for them. Forked children (data-loader workers) get them
    unblocked again.
    """

    def __init__(self, stop: StopRequest, agent_pid: int | None = None, on_signal=None):
        self.stop = stop
        self.agent_pid = agent_pid
        self.on_signal = on_signal   # called with (kind, reason) for every signal, e.g. to log it
        self.signum: int | None = None
        self._previous: dict = {}

    def start(self) -> "SignalWatch":
        sigs = {signal.SIGTERM, signal.SIGINT}
        if self.agent_pid is None:
            for sig in sigs:
                self._previous[sig] = signal.signal(sig, lambda signum, frame: self._got(signum, 0))
            return self
        signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
        os.register_at_fork(after_in_child=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs))
        threading.Thread(target=self._wait, args=(sigs,), name="cvtrain-signals", daemon=True).start()
        return self

    def _wait(self, sigs) -> None:
        while True:
            info = signal.sigwaitinfo(sigs)
            self._got(info.si_signo, info.si_pid)

    def _got(self, signum: int, sender_pid: int) -> None:
        kind, reason = classify_signal(signum, sender_pid, self.agent_pid)
        first = self.signum is None
        if first:
            self.signum = signum
        self.stop.set(kind, reason)
        if self.on_signal is not None:
            self.on_signal(kind, reason, first)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def exit_code(self) -> int:
        """128 + the first signal's number, as a process killed by it would report."""
        return 128 + self.signum if self.signum else EXIT_PREEMPTED
