import pytest
import yaml
from click.testing import CliRunner

from agent.cli import cli
from agent.validate import import_sweeps, validate_sweep_config
from conftest import ROOT

SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_shipped_sweep_files_are_valid_for_wandb_and_for_us(path):
    cfg = yaml.safe_load(path.read_text())
    sweeps = import_sweeps()
    assert sweeps.schema_violations_from_proposed_config(cfg) == []
    sweeps.SweepConfig(cfg)  # what `wandb sweep` validates against
    assert validate_sweep_config(cfg) == []
    assert cfg["command"][1:4] == ["${interpreter}", "-m", "cvtrain"] and "${args}" in cfg["command"]
    assert path.read_text().lstrip().startswith("#"), "each file says what it is for and what it costs"


def test_bad_sweep_file_exits_2_with_every_violation_one_per_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("""
method: bayes
metric: {name: val_f11, goal: maximize}
parameters:
  learning_rat: {min: 1.0e-4, max: 0.1}
  weight_decay: {min: '1e-4', max: 0.1}
  model_name: {values: [resnet18, resnet34], probabilities: [0.5, 0.5]}
  mixup:
    parameters:
      alfa: {values: [0.1, 0.2]}
""")
    res = CliRunner().invoke(cli, ["validate", str(bad)])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    text = "\n".join(lines)
    assert any("learning_rat" in line and "did you mean learning_rate" in line for line in lines)
    assert any("weight_decay.min: '1e-4' is a string" in line for line in lines)
    assert any("probabilities: bayes cannot" in line for line in lines)
    assert any("mixup.alfa" in line and "alpha" in line for line in lines)
    assert any("'val_f11' is never logged" in line for line in lines)
    assert all(line.startswith(str(bad)) for line in lines), text


def test_grid_with_continuous_distribution_is_a_violation():
    cfg = {"method": "grid", "parameters": {"learning_rate": {"distribution": "log_uniform_values", "min": 1e-4,
                                                              "max": 1e-2}}}
    assert any("grid needs discrete values" in v for v in validate_sweep_config(cfg))


def test_create_stores_nothing_for_an_invalid_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "state"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: grid\nparameters: {epochs: {values: ['1e-4']}}\n")
    res = CliRunner().invoke(cli, ["create", str(bad), "--backend", "local"])
    assert res.exit_code == 2 and not (tmp_path / "state" / "cvsweep.db").exists()
