"""A failed W&B trial frees what it held: wandb.agent keeps every trial's exception for its whole
life, so nothing of the trial (its Session, model, loaders and their worker processes) may hang
from what the worker hands it."""
import gc

import psutil
import pytest
from conftest import ROOT  # noqa: F401 - the repository root on sys.path for the workers

pytestmark = pytest.mark.slow


def _loader_workers() -> list:
    """This process's forked children that run this interpreter (DataLoader workers), not wandb-core."""
    me = psutil.Process()
    mine = me.cmdline()
    out = []
    for p in me.children(recursive=True):
        try:
            if p.cmdline() == mine and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def _sessions() -> list:
    from cvtrain.engine import Session

    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, Session)]


def test_a_failed_wandb_trial_leaves_no_session_and_no_loader_worker(wandb_server, monkeypatch, demo_dir,
                                                                    cache_dir, tmp_path):
    from wandb_server import fast_agents

    from agent.wandb_backend import SweepPath
    from agent.wandb_worker import WandbWorker

    fast_agents(monkeypatch)
    monkeypatch.setenv("CVTRAIN_OUTPUT_ROOT", str(tmp_path / "outputs"))
    server = wandb_server
    sweep_id = server.add_sweep({"method": "random", "metric": {"name": "best_val_f1", "goal": "maximize"},
                                 "parameters": {"learning_rate": {"min": 1e-5, "max": 1e-1}}}, project="docs")
    # Diverges in its first epoch (NonFiniteLossError) with a persistent loader worker alive.
    run_id = server.queue_run(sweep_id, {
        "data_dir": str(demo_dir), "model_name": "test_resnet", "img_size": 32, "batch_size": 8, "epochs": 2,
        "num_workers": 1, "cache_dir": str(cache_dir), "progress": False, "system_interval": 5.0,
        "optimizer": "sgd", "learning_rate": 1.0, "weight_decay": 1e6, "log_interval": 1})
    server.cancel_after(sweep_id, 120)
    worker = WandbWorker()
    assert worker.run(SweepPath("docs", sweep_id, server.entity), count=1) == 0
    record = server.runs[run_id]
    assert record.state == "failed" and record.summary["reason"].startswith("NonFiniteLossError")

    assert _sessions() == []
    assert _loader_workers() == []
    # What the worker kept of the failure: its type and message, no traceback to hold frames.
    err = worker.last_result
    assert isinstance(err, Exception) and err.__traceback__ is None and err.__cause__ is None
    assert "NonFiniteLossError: loss became nan" in str(err)
