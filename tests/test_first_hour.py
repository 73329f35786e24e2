"""What a new user meets first: validation that catches what the trainer would reject, plain help, fast errors."""
import json
import os
import re
import subprocess

import pytest
import yaml
from click.testing import CliRunner
from conftest import PY, ROOT

from agent.cli import cli


def _sweep_file(tmp_path, params, method="random"):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"method": method, "metric": {"name": "best_val_f1", "goal": "maximize"},
                                 "parameters": params}))
    return f


@pytest.mark.parametrize("spec", [{"value": "resnet10x"}, {"values": ["resnet18", "resnet10x"]}])
def test_validate_exits_2_for_an_unknown_model_name_in_value_or_values(tmp_path, spec):
    res = CliRunner().invoke(cli, ["validate", str(_sweep_file(tmp_path, {"model_name": spec}))])
    assert res.exit_code == 2
    line = [ln for ln in res.output.splitlines() if "resnet10x" in ln]
    assert len(line) == 1 and "not a timm model" in line[0] and "did you mean resnet10t" in line[0]


def test_validate_runs_the_trainers_checks_on_every_listed_value_and_range_end(tmp_path):
    f = _sweep_file(tmp_path, {"learning_rate": {"distribution": "log_uniform_values", "min": 1.0e-4, "max": 20.0},
                               "optimizer": {"values": ["adamw", "adamm"]},
                               "augment": {"parameters": {"rotate": {"values": [0.5, 1.5]}}},
                               "epochs": {"values": [10, 0]}})
    res = CliRunner().invoke(cli, ["validate", str(f)])
    assert res.exit_code == 2
    out = res.output
    assert "parameters.learning_rate.max=20.0: learning_rate=20.0 (from sweep): must be > 0 and < 10" in out
    assert "parameters.optimizer.values[1]='adamm': optimizer='adamm'" in out and "did you mean adam" in out
    assert "parameters.augment.rotate.values[1]=1.5: augment.rotate=1.5 (from sweep): a probability, must be in [0, 1]" in out
    assert "parameters.epochs.values[1]=0: epochs=0 (from sweep): must be >= 1" in out
    assert "Traceback" not in out


def test_a_mistyped_distribution_names_the_closest_one(tmp_path):
    f = _sweep_file(tmp_path, {"learning_rate": {"distribution": "log_uniform_value", "min": 1.0e-4, "max": 0.1}})
    res = CliRunner().invoke(cli, ["validate", str(f)])
    assert res.exit_code == 2
    assert re.search(r"parameters\.learning_rate\.distribution: 'log_uniform_value' is not a distribution "
                     r"\(did you mean log_uniform_values", res.output)


def test_a_data_dir_missing_from_here_is_flagged_and_create_stores_relative_paths_absolute(tmp_path, monkeypatch,
                                                                                          demo_dir):
    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "state"))
    missing = _sweep_file(tmp_path, {"data_dir": {"value": "no/such/dir"}, "learning_rate": {"values": [0.1]}})
    res = CliRunner().invoke(cli, ["validate", str(missing)])
    assert "warning: parameters.data_dir: 'no/such/dir' does not exist from" in res.stderr
    os.symlink(demo_dir, tmp_path / "data")
    rel = _sweep_file(tmp_path, {"data_dir": {"value": "data"}, "learning_rate": {"values": [0.1]}})
    res = CliRunner().invoke(cli, ["create", str(rel), "--backend", "local"])
    assert res.exit_code == 0, res.output
    assert f"stored as an absolute path (agents may start elsewhere): data_dir: data -> {tmp_path / 'data'}" in res.output
    from agent.store import SQLiteStore

    sweep = SQLiteStore().get_sweep(res.output.strip().splitlines()[-1])
    assert sweep.config["parameters"]["data_dir"]["value"] == str(tmp_path / "data")


def test_cvtrain_help_shows_every_setting_with_type_default_and_meaning():
    from cvtrain.config import KNOWN_KEYS, NESTED_FIELDS
    from cvtrain.config_help import HELP

    proc = subprocess.run([PY, "-m", "cvtrain", "--help"], capture_output=True, text=True, env=_env())
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    out = proc.stdout
    for group in ("experiment:", "data:", "logging:", "paths:", "wandb:"):
        assert f"\n{group}\n" in out
    for key in KNOWN_KEYS:
        assert key in HELP, f"{key} has no help line"
    for n, sub in NESTED_FIELDS.items():
        for k in sub:
            assert f"{n}.{k}" in HELP
    assert re.search(r"--learning_rate\s+float\s+0\.001\s+peak learning rate", out)
    assert re.search(r"--augment\.rotate\s+float\s+0\.5\s+probability of a 90/180/270", out)
    assert re.search(r"--pretrained_path\s+str or empty\s+local weights file", out)


def test_env_template_comments_are_the_help_lines():
    from cvtrain.config import ENV_PREFIX, KNOWN_KEYS, WANDB_ENV
    from cvtrain.config_help import HELP

    lines = (ROOT / ".env.template").read_text().splitlines()
    for name in KNOWN_KEYS:
        var = WANDB_ENV.get(name, ENV_PREFIX + name.upper())
        i = next(i for i, ln in enumerate(lines) if re.match(rf"#?\s*{var}=", ln))
        block = []
        while lines[i - 1].startswith("# ") and not re.match(r"#\s*([A-Z_]+=|---)", lines[i - 1]):
            i -= 1
            block.insert(0, lines[i][2:])
        assert " ".join(block) == HELP[name], var


def test_predict_help_and_a_closed_pipe_are_not_errors():
    proc = subprocess.run([PY, "-m", "cvtrain", "predict", "--help"], capture_output=True, text=True, env=_env())
    assert proc.returncode == 0 and "--checkpoint=PATH" in proc.stdout and proc.stderr == ""
    # `cvtrain -h | head -1`: the reader has gone before the help is written
    proc = subprocess.Popen([PY, "-m", "cvtrain", "-h"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    return env


def test_config_errors_come_before_torch_loads_and_leave_nothing_behind(tmp_path):
    from cvtrain.checks import timm_model_names

    cache = tmp_path / "xdg"
    timm_model_names(cache / "cvtrain")  # the per-timm-version name list, as the first real run leaves it
    code = ("import sys; from cvtrain.cli import main; rc = main(['--model_name=resnet10x', '--epochs=0', "
            f"'--output_dir={tmp_path / 'out'}']); print('torch loaded:', 'torch' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=_env(XDG_CACHE_HOME=str(cache)))
    assert proc.returncode == 2
    assert "torch loaded: False" in proc.stdout
    assert "model_name='resnet10x' (from cli): not a timm model" in proc.stderr and "epochs=0" in proc.stderr
    assert "warmup_epochs" not in proc.stderr, "a consequence of another error is not reported as its own"
    assert not (tmp_path / "out").exists()


def test_amp_defaults_to_what_the_device_supports_and_a_forced_amp_on_cpu_is_said_once(tiny, caplog):
    import logging

    from cvtrain import notices, optim

    caplog.set_level(logging.INFO, logger="cvtrain.optim")
    assert tiny().experiment.amp is None
    import torch

    assert optim.amp_context(tiny(), torch.device("cpu"))[1] is None
    notices._SAID.clear()
    for _ in range(3):
        optim.amp_context(tiny(amp=True), torch.device("cpu"))
    said = [r for r in caplog.records if "amp=True has no effect on cpu" in r.getMessage()]
    assert len(said) == 1


# -- the cvsweep commands a new user reaches for next -------------------------------------------------
def _local_sweep(tmp_path, monkeypatch, cfg=None):
    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "state"))
    from agent.controller import LocalController
    from agent.store import SQLiteStore

    cfg = cfg or {"name": "s", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
                  "parameters": {"learning_rate": {"values": [0.001, 0.002, 0.003, 0.004, 0.005]}}}
    ctl = LocalController(SQLiteStore(tmp_path / "state"))
    return ctl, ctl.create_sweep(cfg)


def _end(ctl, sweep, state, metric=None, stopped=False, error=None):
    t = ctl.claim(sweep.id, "w").trial
    if stopped:  # as hyperband ends a trial: finished with its metric, flagged stopped
        ctl.store.update_trial(t.id, stopped=1, stop_reason="stopped after epoch 3: best_val_f1 0.01 below 0.09")
        state = "stopped"
    ctl.finish(t.id, state, {"best_val_f1": metric} if metric is not None else {}, error=error, owner=t.owner)
    return t


def test_runs_state_stopped_lists_what_hyperband_stopped_and_a_bogus_state_is_refused(tmp_path, monkeypatch):
    ctl, sweep = _local_sweep(tmp_path, monkeypatch)
    _end(ctl, sweep, "finished", 0.5)
    s1 = _end(ctl, sweep, "finished", 0.2, stopped=True)
    _end(ctl, sweep, "failed", error="DataError: 2 image(s) could not be read")
    res = CliRunner().invoke(cli, ["runs", sweep.id, "--state", "stopped", "--format", "json"])
    rows = json.loads(res.stdout)
    assert [r["run"] for r in rows] == [s1.name] and rows[0]["state"] == "stopped" and "epoch 3" in rows[0]["stop_reason"]
    table = CliRunner().invoke(cli, ["runs", sweep.id]).stdout.splitlines()
    assert table[0].split() == ["sweep", "run_id", "run", "state", "metric", "config", "reason"]
    assert any(" stopped " in ln and "stopped after epoch 3" in ln for ln in table)
    bad = CliRunner().invoke(cli, ["runs", sweep.id, "--state", "bogus"])
    assert bad.exit_code == 2 and "'bogus' is not one of 'queued', 'running', 'finished', 'stopped'" in bad.stderr


def test_leaderboard_says_what_it_leaves_out_and_writes_plain_csv_with_stopped_trials_named(tmp_path, monkeypatch):
    ctl, sweep = _local_sweep(tmp_path, monkeypatch)
    for m in (0.5, 0.123456789, 0.3):
        _end(ctl, sweep, "finished", m)
    _end(ctl, sweep, "finished", 0.05, stopped=True)
    res = CliRunner().invoke(cli, ["leaderboard", sweep.id, "--top", "2"])
    assert res.exit_code == 0 and "showing 2 of 4; --top 0 for all" in res.stderr
    assert len(CliRunner().invoke(cli, ["leaderboard", sweep.id, "--top", "0"]).stdout.strip().splitlines()) == 1 + 4 + 1
    csv_out = CliRunner().invoke(cli, ["leaderboard", sweep.id, "--format", "csv"]).stdout
    assert "\r" not in csv_out and csv_out.endswith("\n") and not csv_out.endswith("\n\n")
    lines = csv_out.splitlines()
    assert lines[0] == "rank,run,state,best_val_f1,learning_rate"
    assert "0.123456789" in csv_out and lines[-1].split(",")[2] == "stopped" and lines[-1].endswith(",0.004")
    md = CliRunner().invoke(cli, ["leaderboard", sweep.id, "--format", "markdown"]).stdout
    assert "| stopped |" in md and "_stopped: ended early by the sweep (hyperband), ranked with its real metric_" in md


def test_an_all_failed_sweep_says_why_there_is_nothing_to_rank(tmp_path, monkeypatch):
    ctl, sweep = _local_sweep(tmp_path, monkeypatch)
    for _ in range(2):
        _end(ctl, sweep, "failed", error="NonFiniteLossError: loss became nan")
    res = CliRunner().invoke(cli, ["leaderboard", sweep.id])
    assert res.exit_code == 0 and res.stdout == ""
    assert (f"nothing to rank: no trial of sweep {sweep.id} has a finite best_val_f1 yet (2 failed); "
            f"see why: cvsweep runs {sweep.id} --state failed") in res.stderr


def test_list_shows_every_sweep_newest_first_and_status_without_an_id_the_newest(tmp_path, monkeypatch):
    ctl, old = _local_sweep(tmp_path, monkeypatch)
    _end(ctl, old, "finished", 0.42)
    new = ctl.create_sweep({"name": "newer", "method": "grid", "parameters": {"learning_rate": {"values": [0.1]}}})
    res = CliRunner().invoke(cli, ["list"])
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["id", "name", "backend", "state", "trials", "best", "age"]
    assert lines[1].startswith(new.id) and lines[2].startswith(old.id) and "1 finished" in lines[2] and "0.4200" in lines[2]
    rows = json.loads(CliRunner().invoke(cli, ["list", "--format", "json"]).stdout)
    assert [r["id"] for r in rows] == [new.id, old.id] and rows[1]["trials"] == {"finished": 1}
    assert f"sweep {new.id} (local) newer: running" in CliRunner().invoke(cli, ["status"]).stdout


def test_list_and_runs_on_a_fresh_directory_and_a_stopped_trial_without_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "nothing-yet"))
    res = CliRunner().invoke(cli, ["list"])
    assert res.exit_code == 0 and "no sweeps in" in res.stderr
    assert json.loads(CliRunner().invoke(cli, ["list", "--format", "json"]).stdout) == []
    ctl, sweep = _local_sweep(tmp_path, monkeypatch)
    t = ctl.claim(sweep.id, "w").trial
    ctl.finish(t.id, "stopped", {"best_val_f1": 0.1}, owner=t.owner)  # no stop answer came first: no reason
    res = CliRunner().invoke(cli, ["runs", sweep.id])
    assert res.exit_code == 0 and " stopped " in res.stdout, res.output


def test_without_gpus_the_agent_plans_up_to_two_cpu_workers_however_none_is_said(tmp_path, monkeypatch):
    _, sweep = _local_sweep(tmp_path, monkeypatch)
    expected = min(2, len(os.sched_getaffinity(0)))
    for gpus in ("none", "all"):
        res = CliRunner().invoke(cli, ["agent", sweep.id, "--gpus", gpus, "--dry-run"],
                                 env={"CUDA_VISIBLE_DEVICES": ""})
        assert res.exit_code == 0 and len(res.stdout.strip().splitlines()) == expected, (gpus, res.output)


CVSWEEP_COMMANDS = ["validate", "create", "agent", "status", "list", "pause", "resume", "stop", "cancel", "runs",
                    "leaderboard", "sync", "report", "finalize", "demo", "demo-data", "slurm"]
BAD_ARGS = {"validate": ["--nope"], "create": ["s.yaml", "--backend", "cloud"], "agent": ["x", "--workers", "0"],
            "status": ["--nope"], "list": ["--format", "xml"], "pause": [], "resume": [], "stop": [], "cancel": [],
            "runs": ["x", "--state", "bogus"], "leaderboard": ["x", "--format", "xls"], "sync": [],
            "report": ["x", "--top", "0"], "finalize": ["x", "--folds", "1"], "demo": ["--workers", "0"],
            "demo-data": [], "slurm": ["x", "--gpus-per-task", "-1"]}


@pytest.mark.parametrize("command", CVSWEEP_COMMANDS)
def test_every_cvsweep_command_has_help_and_answers_a_bad_argument_in_one_line(command, tmp_path, monkeypatch):
    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "state"))
    helped = subprocess.run([PY, "-m", "agent", command, "--help"], capture_output=True, text=True, env=_env())
    assert helped.returncode == 0 and "Usage: cvsweep " + command in helped.stdout and helped.stderr == ""
    bad = subprocess.run([PY, "-m", "agent", command, *BAD_ARGS[command]], capture_output=True, text=True, env=_env())
    assert bad.returncode == 2, bad.stdout + bad.stderr
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in bad.stderr, bad.stderr


@pytest.mark.parametrize("args", [["--help"], ["predict", "--help"], ["--learnin_rate=0.1"], ["--epochs=zero"],
                                  ["predict", "--checkpoint=nope.pt"], ["predict", "--bogus=1"]])
def test_every_cvtrain_command_has_help_and_answers_a_bad_argument_without_a_traceback(args, tmp_path):
    proc = subprocess.run([PY, "-m", "cvtrain", *args], capture_output=True, text=True, env=_env(), cwd=tmp_path)
    assert "Traceback" not in proc.stderr
    if "--help" in args:
        assert proc.returncode == 0 and proc.stdout.startswith(("cvtrain: train one model", "usage: cvtrain predict"))
    else:
        assert proc.returncode == 2 and proc.stderr.startswith("cvtrain"), proc.stderr
        assert not (tmp_path / "outputs").exists()


def test_a_failed_trial_s_reason_is_in_the_agent_log_once(tmp_path, demo_dir, cache_dir):
    from sweep_helpers import cvsweep, tiny_params

    cfg = {"name": "bad", "method": "grid", "parameters": tiny_params(demo_dir, cache_dir,
                                                                      data_dir={"value": str(tmp_path / "nodata")})}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(cfg))
    state = tmp_path / "state"
    sid = cvsweep(["create", str(f), "--backend", "local"], state).stdout.strip().splitlines()[-1]
    res = cvsweep(["agent", sid, "--gpus", "none", "--workers", "1"], state)
    out = res.stdout + res.stderr
    lines = [ln for ln in out.splitlines() if "does not exist" in ln]
    assert len(lines) == 1 and "trial bad-001 failed: data_dir=" in lines[0], out[-3000:]
