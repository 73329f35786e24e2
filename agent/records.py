"""The records a run store returns (:class:`Sweep`, :class:`Trial`), the store's interface
(:class:`RunStore`) and its errors. Every backend speaks these; :mod:`agent.store` re-exports them."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

TERMINAL = ("finished", "failed", "crashed", "killed")
#: W&B run states (``sweeps.RunState``) our states map to when the search engine reads them.
STATES = ("pending", "running", "finished", "failed", "crashed", "killed", "preempted")


class StoreError(RuntimeError):
    pass


class LeaseLost(StoreError):
    """A write about a trial from a worker that no longer owns it (its lease was given to another)."""


@dataclass(frozen=True)
class Owner:
    """Who may write about a trial: the worker a claim named and the claim's attempt number."""
    worker: str
    attempt: int

    def __str__(self) -> str:
        return f"{self.worker} (attempt {self.attempt})"


@dataclass
class Trial:
    sweep_id: str
    name: str
    state: str
    params: dict
    id: int | None = None
    run_id: str | None = None
    summary: dict = field(default_factory=dict)
    metric: float | None = None
    history: list = field(default_factory=list)   # the sweep metric per epoch, in order
    stopped: bool = False
    stop_reason: str | None = None
    error: str | None = None
    worker: str | None = None
    attempts: int = 0             # times a worker was lost with this trial (leases that ran out)
    attempt: int = 0              # the current claim's number: 1 for the first, +1 per claim (fencing token)
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    lease_expires: float | None = None
    output_dir: str | None = None
    wandb_dir: str | None = None
    rank: int | None = None

    @property
    def owner(self) -> Owner:
        return Owner(self.worker or "", self.attempt)


@dataclass
class Sweep:
    id: str
    config: dict
    state: str = "running"       # running | paused | finished | cancelled
    name: str | None = None
    project: str | None = None
    entity: str | None = None
    backend: str = "local"
    created_at: float | None = None
    finished_reason: str | None = None
    seed: int | None = None      # seeds every suggestion (with the number of trials): the search replays

    @property
    def metric_name(self) -> str | None:
        return (self.config.get("metric") or {}).get("name")

    @property
    def goal(self) -> str:
        return (self.config.get("metric") or {}).get("goal", "minimize")


class RunStore(ABC):
    """Read access to a sweep and its trials; the queries need nothing more."""

    @abstractmethod
    def get_sweep(self, sweep_id: str) -> Sweep: ...

    @abstractmethod
    def list_trials(self, sweep_id: str | None = None, states: tuple[str, ...] | None = None,
                    with_history: bool = True) -> list[Trial]:
        """The sweep's trials, oldest first; ``with_history=False`` may skip the per-epoch metric lists."""

    @abstractmethod
    def epoch_history(self, trial: Trial) -> list[dict]:
        """The metrics the trainer logged per epoch (``epoch``, ``val_f1``, ...), in order."""

    def set_ranks(self, sweep_id: str, ranks: dict[str, int]) -> None:
        """Record leaderboard ranks by run id; every other trial of the sweep loses its old rank."""
        raise NotImplementedError
