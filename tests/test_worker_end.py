"""A worker that stalls past its lease while ending a trial writes nothing more of it: the worker
that resumed the trial owns its checkpoints and summary from then on."""
import threading
from pathlib import Path

import pytest
from sweep_helpers import tiny_params

from agent.controller import LocalController
from agent.store import SQLiteStore
from agent.worker import run_trial

pytestmark = pytest.mark.slow  # trains a small model


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


class StallsWhileEnding(LocalController):
    """The first ownership check after the last epoch's report finds the lease run out and the trial
    claimed by another worker, as if this worker had stalled there past its lease."""

    def __init__(self, *args, last_epoch: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_epoch, self.ending, self.thief = last_epoch, False, None

    def report(self, trial_id, epoch, metrics, *, owner):
        answer = super().report(trial_id, epoch, metrics, owner=owner)
        self.ending = epoch == self.last_epoch
        return answer

    def heartbeat(self, trial_id, owner):
        if self.ending and self.thief is None:
            self.clock.t += self.lease + 1
            self.thief = self.claim(self.sweep_id, "w2").trial
            self.files_then = snapshot(self.out)
        return super().heartbeat(trial_id, owner)


def test_a_worker_that_lost_its_lease_while_ending_leaves_the_new_owners_files_alone(tmp_path, demo_dir, cache_dir):
    params = {k: v["value"] for k, v in tiny_params(demo_dir, cache_dir, epochs={"value": 2}).items()}
    # A lease far longer than the trial: the heartbeat thread never beats; only the ending's checks ask.
    ctl = StallsWhileEnding(SQLiteStore(tmp_path), lease_seconds=3600, clock=Clock(), last_epoch=2)
    sweep = ctl.create_sweep({"name": "s", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
                              "parameters": {k: {"value": v} for k, v in params.items()}})
    ctl.sweep_id = sweep.id
    trial = ctl.claim(sweep.id, "w1").trial
    out = ctl.out = Path(trial.output_dir)

    assert run_trial(ctl, trial, "w1", threading.Event(), environ={}) == "lost"

    assert ctl.thief is not None and ctl.thief.id == trial.id and ctl.thief.attempt == trial.attempt + 1
    ckpts = out / "checkpoints"
    assert (ckpts / "last.pt").exists()  # what the new owner resumes from: not unlinked
    assert not (out / "summary.json").exists() and not (out / "confusion_matrix.json").exists()
    row = ctl.store.get_trial(trial.id)
    assert (row.state, row.worker, row.attempt) == ("running", "w2", trial.attempt + 1)
    assert snapshot(out) == ctl.files_then  # from the stall on, the old owner wrote, slimmed, deleted nothing


def test_a_bayes_sweeps_worker_loads_the_search_with_the_trainer_before_the_freeze(tmp_path):
    """Only a bayes sweep's claims need scipy and scikit-learn: its worker imports them with torch, before
    ``gc.freeze``; a grid or random sweep's worker, or one given a wrong id, does not load them at all."""
    from agent.settings import Settings
    from agent.worker import _search_imports

    ctl = LocalController(SQLiteStore(tmp_path))
    metric = {"name": "best_val_f1", "goal": "maximize"}
    bayes = ctl.create_sweep({"method": "bayes", "metric": metric, "parameters": {"lr": {"min": 0.1, "max": 1.0}}})
    grid = ctl.create_sweep({"method": "grid", "metric": metric, "parameters": {"lr": {"values": [0.1]}}})
    settings = Settings(state_dir=tmp_path, lease_seconds=60)
    assert _search_imports(bayes.id, settings) == ("sweeps.bayes_search",)
    assert _search_imports(grid.id, settings) == ()
    assert _search_imports("nosuchid", settings) == ()
