"""The W&B backend at its network boundary: wandb's public-API objects are faked, nothing else.

Live tests at the bottom run only with WANDB_API_KEY set.
"""
import json
import os

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.queries import leaderboard
from agent.store import WandbStore
from wandb_fakes import fake_api


def test_wandb_runs_read_through_the_same_queries():
    api = fake_api()
    store = WandbStore(api=api, entity="team", project="docs")
    rows = leaderboard(store, "abc123")
    assert [r["run"] for r in rows] == ["r3", "r1", "r4"] and [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["config"] == {"learning_rate": 0.0003}  # sweep parameters only, no _wandb internals
    assert api.paths[0] == "team/docs/abc123"
    failed = [t for t in store.list_trials("abc123") if t.state == "failed"]
    assert failed[0].error == "NonFiniteLossError: nan"


def test_write_back_ranks_on_wandb_runs():
    api = fake_api()
    store = WandbStore(api=api, entity="team", project="docs")
    store.set_ranks("abc123", {r["run"]: r["rank"] for r in leaderboard(store, "abc123")})
    runs = {r.name: r for r in api.sweeps["abc123"].runs}
    assert runs["r3"].summary["sweep_rank"] == 1 and runs["r3"].updates == 1
    assert "sweep_rank" not in runs["r2"].summary and runs["r2"].updates == 0


def test_leaderboard_cli_on_a_wandb_sweep(monkeypatch, tmp_path):
    import wandb

    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(wandb, "Api", lambda *a, **k: fake_api())
    res = CliRunner().invoke(cli, ["leaderboard", "team/docs/abc123", "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["run"] for r in rows] == ["r3", "r1", "r4"] and rows[0]["metric"] == 0.83


def test_create_with_wandb_backend_registers_through_wandb_sweep(monkeypatch, tmp_path):
    import wandb

    calls = []
    monkeypatch.setattr(wandb, "sweep", lambda sweep, project, entity: calls.append((sweep, project, entity)) or "sw42")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_MODE", "online")
    res = CliRunner().invoke(cli, ["create", str(__import__("conftest").ROOT / "sweeps" / "demo.yaml"),
                                   "--project", "p1"])
    assert res.exit_code == 0, res.output
    assert "backend: wandb (a W&B API key is configured and WANDB_MODE is online)" in res.output
    assert res.output.strip().splitlines()[-1] == "sw42"
    assert calls[0][1] == "p1" and calls[0][0]["method"] == "bayes"
    assert "k" * 40 not in res.output


def test_default_backend_is_local_without_a_key(monkeypatch, tmp_path):
    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "state"))
    res = CliRunner().invoke(cli, ["create", str(__import__("conftest").ROOT / "sweeps" / "demo.yaml")])
    assert res.exit_code == 0, res.output
    assert "backend: local (no W&B API key configured)" in res.output
    assert (tmp_path / "state" / "cvsweep.db").exists()


def test_sync_without_a_key_says_what_to_do(monkeypatch, tmp_path, demo_dir, cache_dir):
    from agent.controller import LocalController
    from agent.store import SQLiteStore

    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "state"))
    store = SQLiteStore()
    sweep = LocalController(store).create_sweep({"method": "grid", "parameters": {"epochs": {"value": 1}}})
    (store.root / "sweeps" / sweep.id / "wandb" / "offline-run-20261127_000000-abc").mkdir(parents=True)
    res = CliRunner().invoke(cli, ["sync", sweep.id])
    assert res.exit_code == 1 and "no W&B API key" in res.output and "Nothing was uploaded" in res.output


def test_wandb_agent_function_runs_our_trainer_with_the_sweep_values(monkeypatch, tmp_path, demo_dir, cache_dir):
    """The in-process W&B path: wandb.agent hands the trial's parameters over WANDB_SWEEP_PARAM_PATH."""
    from wandb.sdk.lib.config_util import save_config_file_from_dict

    from agent.worker import wandb_worker

    params = {"data_dir": str(demo_dir), "model_name": "test_resnet", "img_size": 32, "batch_size": 16,
              "epochs": 1, "learning_rate": 0.0042, "num_workers": 0, "cache_dir": str(cache_dir),
              "output_dir": str(tmp_path / "trial"), "progress": False}

    def fake_agent(sweep_id, function, count, project, entity):
        for _ in range(count):
            path = tmp_path / f"config-{sweep_id}.yaml"
            save_config_file_from_dict(str(path), {k: {"value": v} for k, v in params.items()})
            monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(path))
            function()

    assert wandb_worker("sw1", 1, "p", None, agent_fn=fake_agent) == 0
    assert "learning_rate: 0.0042" in (tmp_path / "trial" / "config.yaml").read_text()
    assert json.loads((tmp_path / "trial" / "summary.json").read_text())["state"] == "finished"


live = pytest.mark.skipif(not os.environ.get("WANDB_API_KEY") or not os.environ.get("CVSWEEP_LIVE_TESTS"),
                          reason="live W&B tests need WANDB_API_KEY and CVSWEEP_LIVE_TESTS=1 (and a network)")


@pytest.mark.live
@live
def test_live_create_and_read_a_wandb_sweep(monkeypatch):
    from agent.wandb_backend import create_wandb_sweep

    monkeypatch.setenv("WANDB_MODE", "online")
    cfg = {"name": "cvsweep-live-test", "method": "random", "metric": {"name": "best_val_f1", "goal": "maximize"},
           "run_cap": 1, "parameters": {"learning_rate": {"values": [0.001]}}}
    project = os.environ.get("WANDB_PROJECT", "cvsweep-tests")
    sweep_id = create_wandb_sweep(cfg, project=project, entity=os.environ.get("WANDB_ENTITY"))
    store = WandbStore(entity=os.environ.get("WANDB_ENTITY"), project=project)
    assert store.get_sweep(sweep_id).config["method"] == "random"
    assert store.list_trials(sweep_id) == []
