"""A sweep's ``name:`` is the user's text: it names trials, never where their files go."""
import threading

import pytest
import yaml
from click.testing import CliRunner
from sweep_helpers import tiny_params

from agent.cli import cli
from agent.controller import path_safe
from agent.settings import load_settings
from agent.worker import local_worker_loop


def test_a_name_becomes_one_directory_name():
    for name in ("../x", "../../../elsewhere", "/abs/path", "a\\b", "..", ".", ""):
        safe = path_safe(name)
        assert safe and "/" not in safe and "\\" not in safe and not safe.startswith("."), (name, safe)
    assert path_safe("lr-sweep_2.v1") == "lr-sweep_2.v1"  # a plain name stays as it is


@pytest.mark.slow  # trains a small model
def test_a_sweep_named_with_dot_dot_keeps_every_file_under_cvsweep_dir(tmp_path, monkeypatch, demo_dir, cache_dir):
    top = tmp_path / "top"
    state = top / "a" / "b" / "c" / "state"
    monkeypatch.setenv("CVSWEEP_DIR", str(state))
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump({"name": "../../../../elsewhere", "method": "grid",
                                 "metric": {"name": "best_val_f1", "goal": "maximize"},
                                 "parameters": tiny_params(demo_dir, cache_dir)}))
    res = CliRunner().invoke(cli, ["create", str(f), "--backend", "local"])
    assert res.exit_code == 0, res.output
    sweep_id = res.output.strip().splitlines()[-1]
    # One real trial: outputs, checkpoints and their retention at the end.
    assert local_worker_loop(sweep_id, "w", 1, threading.Event(), settings=load_settings()) == 0
    outside = [p for p in top.rglob("*") if state not in p.parents and p != state and p not in state.parents]
    assert outside == []
    trial_dirs = list((state / "sweeps" / sweep_id / "trials").iterdir())
    assert len(trial_dirs) == 1 and (trial_dirs[0] / "summary.json").exists()
