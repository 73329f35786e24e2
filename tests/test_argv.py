"""The trainer accepts arguments exactly as W&B's own `wandb agent` builds them."""
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from cvtrain.cli import build_config, parse_argv


def agent_argv(params: dict) -> list[str]:
    command = {"args": {k: {"value": v} for k, v in params.items()}}
    return create_sweep_command_args(command)["args"]


def test_wandb_agent_argv_round_trips_booleans_lists_dicts_and_floats():
    params = {"learning_rate": 0.001, "amp": False, "model_name": "resnet50", "mixup": {"alpha": 0.2},
              "tta": ["none", "rot180"], "tags": ["a", "b c"], "pretrained": True, "grad_clip": None,
              "weight_decay": 1e-05, "img_size": 64}
    argv = agent_argv(params)
    assert "--amp=False" in argv and "--mixup={'alpha': 0.2}" in argv  # what wandb really writes
    cfg = build_config(parse_argv(argv), environ={})
    e = cfg.experiment
    assert e.learning_rate == 0.001 and e.amp is False and e.pretrained is True and e.model_name == "resnet50"
    assert e.mixup.alpha == 0.2 and e.tta == ["none", "rot180"] and cfg.wandb.tags == ["a", "b c"]
    assert e.grad_clip is None and e.weight_decay == 1e-05 and e.img_size == 64


def test_space_separated_and_bare_flags_work_for_humans():
    args = parse_argv(["--epochs", "3", "--pretrained", "--resume"])
    assert args.values == {"epochs": "3", "pretrained": "True"} and args.resume == "auto"


def test_sweep_param_file_wins_over_config_file(tmp_path):
    from wandb.sdk.lib.config_util import save_config_file_from_dict

    (tmp_path / "base.yaml").write_text("learning_rate: 0.1\nepochs: 4\n")
    save_config_file_from_dict(str(tmp_path / "p.yaml"), {"learning_rate": {"value": 0.0003}})
    environ = {"WANDB_SWEEP_ID": "s1", "WANDB_SWEEP_PARAM_PATH": str(tmp_path / "p.yaml")}
    cfg = build_config(parse_argv([f"--config={tmp_path / 'base.yaml'}"]), environ=environ)
    assert cfg.experiment.learning_rate == 0.0003 and cfg.experiment.epochs == 4
