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

import threading

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
