import subprocess

import pytest
import yaml
from click.testing import CliRunner
from conftest import PY, ROOT

from agent.cli import cli
from agent.validate import import_sweeps, validate_sweep_config

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


def _grid_backbones_with(tmp_path, model: str, size: int):
    cfg = yaml.safe_load((ROOT / "sweeps" / "grid-backbones.yaml").read_text())
    cfg["parameters"]["model_name"]["values"][-1] = model
    cfg["parameters"]["img_size"] = {"value": size}
    cfg["parameters"].pop("data_dir")
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_grid_point_whose_model_takes_another_input_size_exits_2_naming_both_values(tmp_path):
    result = CliRunner().invoke(cli, ["validate", str(_grid_backbones_with(tmp_path, "deit_small_patch16_224", 320))])
    assert result.exit_code == 2, result.output
    assert ("model_name='deit_small_patch16_224' (parameters.model_name.values[9]) with img_size=320 "
            "(parameters.img_size.value): deit_small_patch16_224 takes 224x224 images only") in result.output
    assert "use img_size=224" in result.output
    ok = CliRunner().invoke(cli, ["validate", str(_grid_backbones_with(tmp_path, "deit_small_patch16_224", 224))])
    assert "deit_small_patch16_224" not in ok.output and "img_size" not in ok.output, ok.output


def test_every_pair_of_listed_models_and_sizes_and_a_range_of_sizes_is_checked():
    base = {"method": "random", "metric": {"name": "best_val_f1", "goal": "maximize"}}
    pairs = validate_sweep_config({**base, "parameters": {
        "model_name": {"values": ["resnet18", "deit_tiny_patch16_224", "deit_base_patch16_384"]},
        "img_size": {"values": [224, 384]}}})
    assert len(pairs) == 2, pairs
    assert "model_name='deit_tiny_patch16_224' (parameters.model_name.values[1]) with img_size=384" in pairs[0]
    assert "model_name='deit_base_patch16_384' (parameters.model_name.values[2]) with img_size=224" in pairs[1]
    ranged = validate_sweep_config({**base, "parameters": {
        "model_name": {"value": "vit_small_patch16_384"},
        "img_size": {"distribution": "int_uniform", "min": 256, "max": 384}}})
    assert ranged == ["parameters: model_name='vit_small_patch16_384' (parameters.model_name.value) with img_size "
                      "from 256 to 384 (parameters.img_size.min..max): vit_small_patch16_384 takes 384x384 images "
                      "only (a fixed input size in timm); use img_size=384"]
    # Not in the sweep at all: the trainer's default size (224) is what each trial gets.
    assert validate_sweep_config({**base, "parameters": {"model_name": {"values": ["deit_tiny_patch16_224",
                                                                                 "resnet18"]}}}) == []


def test_the_trainer_refuses_a_fixed_size_model_at_another_size_before_training(tmp_path):
    proc = subprocess.run([PY, "-m", "cvtrain", "--model_name=deit_tiny_patch16_224.fb_in1k", "--img_size=320",
                           f"--output_dir={tmp_path / 'out'}", f"--data_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert ("model_name='deit_tiny_patch16_224.fb_in1k' (from cli) with img_size=320 (from cli): "
            "deit_tiny_patch16_224.fb_in1k takes 224x224 images only") in proc.stderr
    assert not (tmp_path / "out").exists()
