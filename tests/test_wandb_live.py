"""The W&B scenarios of test_wandb_wire.py / test_wandb_agents.py against real W&B.

Run only with WANDB_API_KEY and CVSWEEP_LIVE_TESTS=1 (and a network); WANDB_PROJECT (default
cvsweep-tests) and WANDB_ENTITY choose where. Each test makes its own sweep and leaves it cancelled.
"""
import json
import math
import os
import signal
import subprocess
import time

import pytest
import yaml
from conftest import PY, ROOT

pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.skipif(
    not os.environ.get("WANDB_API_KEY") or not os.environ.get("CVSWEEP_LIVE_TESTS"),
    reason="live W&B tests need WANDB_API_KEY and CVSWEEP_LIVE_TESTS=1 (and a network)")]

PROJECT = os.environ.get("WANDB_PROJECT", "cvsweep-tests")


@pytest.fixture
def live_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_PROJECT", PROJECT)
    env = dict(os.environ)
    env.update(PATH=os.pathsep.join([os.path.dirname(PY), env.get("PATH", "")]), PYTHONPATH=str(ROOT),
               CVTRAIN_OUTPUT_ROOT=str(tmp_path / "outputs"), CVSWEEP_DIR=str(tmp_path / "state"))
    return env


def _sweep(demo_dir, cache_dir, epochs, run_cap=1, **params):
    cfg = yaml.safe_load((ROOT / "sweeps" / "demo.yaml").read_text())
    cfg.update(name="cvsweep-live", run_cap=run_cap)
    cfg.pop("early_terminate", None)
    cfg["parameters"] = {"data_dir": {"value": str(demo_dir)}, "cache_dir": {"value": str(cache_dir)},
                         "model_name": {"value": "test_resnet"}, "img_size": {"value": 32},
                         "batch_size": {"value": 16}, "epochs": {"value": epochs}, "num_workers": {"value": 0},
                         "learning_rate": {"values": [1e-4, 3e-3]}, "amp": {"value": False},
                         "augment": {"parameters": {"rotate": {"value": 0.5}}}, **params}
    cfg["method"] = "random"
    return cfg


def _create(cfg, env, tmp_path):
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([PY, "-m", "agent", "create", str(f), "--backend", "wandb", "--project", PROJECT],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if "cvsweep agent " in x)
    return line.split("cvsweep agent ")[1].split()[0]  # entity/project/id


def _runs(path):
    import wandb

    entity, project, sid = path.split("/")
    return list(wandb.Api().runs(f"{entity}/{project}", filters={"sweep": sid}))


def test_live_wandb_agent_runs_cvtrain_and_a_cancel_stops_the_trial(live_env, tmp_path, demo_dir, cache_dir):
    path = _create(_sweep(demo_dir, cache_dir, epochs=500), live_env, tmp_path)
    agent = subprocess.Popen([PY, "-m", "wandb", "agent", "--count", "1", path], cwd=tmp_path, env=live_env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not any(r.summary.get("best_val_f1") for r in _runs(path)):
            time.sleep(5)
        subprocess.run([PY, "-m", "agent", "cancel", path], env=live_env, check=True, timeout=120)
        out, _ = agent.communicate(timeout=180)
    finally:
        agent.kill()
    (run,) = _runs(path)
    assert run.state == "finished" and run.summary["stopped"] is True and run.summary["state"] == "stopped"
    assert math.isfinite(run.summary["best_val_f1"]) and run.summary["reason"]
    summary = json.loads(next((tmp_path / "outputs").rglob("summary.json")).read_text())
    assert summary["state"] == "stopped" and summary["best_val_f1"] == run.summary["best_val_f1"]


def test_live_cvsweep_agent_two_workers_sigterm_preempts_and_write_back_keeps_one_summary_run(
        live_env, tmp_path, demo_dir, cache_dir):
    path = _create(_sweep(demo_dir, cache_dir, epochs=500, run_cap=4), live_env, tmp_path)
    agent = subprocess.Popen([PY, "-m", "agent", "agent", path, "--gpus", "none", "--workers", "2"], cwd=tmp_path,
                             env=live_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and sum(bool(r.summary.get("best_val_f1")) for r in _runs(path)) < 2:
            time.sleep(5)
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=300)
    finally:
        agent.kill()
    assert agent.returncode == 143, out[-3000:]
    runs = _runs(path)
    assert len(runs) == 2 and all(r.summary["state"] == "preempted" for r in runs)
    assert all(r.state in ("preempted", "preempting") for r in runs)
    for _ in range(2):
        res = subprocess.run([PY, "-m", "agent", "leaderboard", path, "--write-back", "--format", "json"],
                             env=live_env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
    import wandb

    entity, project, sid = path.split("/")
    summaries = list(wandb.Api().runs(f"{entity}/{project}", filters={"group": sid, "jobType": "sweep-summary"}))
    assert len(summaries) == 1
    subprocess.run([PY, "-m", "agent", "cancel", path], env=live_env, timeout=120)


def test_live_netrc_credentials_alone_make_the_trainer_online(live_env, tmp_path, demo_dir, cache_dir):
    from urllib.parse import urlsplit

    import wandb

    home = tmp_path / "home"
    home.mkdir()
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or str(wandb.Settings().base_url)).netloc
    (home / ".netrc").write_text(f"machine {host}\n  login user\n  password {os.environ['WANDB_API_KEY']}\n")
    (home / ".netrc").chmod(0o600)
    env = {k: v for k, v in live_env.items() if k not in ("WANDB_API_KEY", "WANDB_MODE", "NETRC")}
    env["HOME"] = str(home)
    argv = [PY, "-m", "cvtrain", f"--data_dir={demo_dir}", f"--cache_dir={cache_dir}", "--model_name=test_resnet",
            "--img_size=32", "--epochs=1", "--num_workers=0", f"--output_dir={tmp_path / 'run'}", f"--project={PROJECT}"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "W&B online: W&B credentials for" in proc.stderr and ".netrc" in proc.stderr
    assert os.environ["WANDB_API_KEY"] not in proc.stdout + proc.stderr


def test_live_create_and_read_a_wandb_sweep(live_env):
    from agent.wandb_backend import WandbStore, create_wandb_sweep

    cfg = {"name": "cvsweep-live-test", "method": "random", "metric": {"name": "best_val_f1", "goal": "maximize"},
           "run_cap": 1, "parameters": {"learning_rate": {"values": [0.001]}}}
    path = create_wandb_sweep(cfg, project=PROJECT, entity=os.environ.get("WANDB_ENTITY"))
    assert path.entity and path.project == PROJECT
    store = WandbStore(project=PROJECT, entity=path.entity)
    assert store.get_sweep(str(path)).config["method"] == "random"
    assert store.list_trials(str(path)) == []
