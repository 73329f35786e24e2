"""One trial_config for both backends: the local worker's claimed trial and the trial wandb.agent runs
in-process get their settings through the same layers (environment < the sweep's split seed < the
sweep's parameters < what the worker fixes)."""
import yaml

from agent.store import Trial
from agent.trial_config import local_trial_config, wandb_trial_config
from cvtrain.split import split_seed_from_sweep_id


def test_a_local_trial_is_an_offline_tagged_run_with_the_sweeps_seed_and_its_parameters(tmp_path):
    trial = Trial(sweep_id="s1", name="s1-3", state="running", params={"learning_rate": 0.05, "seed": 4},
                  run_id="abcd1234", output_dir=str(tmp_path / "t"))
    env = {"CVTRAIN_EPOCHS": "2", "CVTRAIN_LEARNING_RATE": "0.1", "WANDB_MODE": "online"}
    cfg = local_trial_config(trial, env, env_file=None, split_seed=77)
    assert cfg.experiment.learning_rate == 0.05 and cfg.sources["learning_rate"] == "sweep"   # sweep over env
    assert cfg.experiment.epochs == 2                                                          # env kept
    assert cfg.data.split_seed == 77 and cfg.experiment.seed == 4     # one split whatever the trial's seed
    assert cfg.wandb.mode == "offline" and {"cvsweep", "sweep-s1"} <= set(cfg.wandb.tags)
    assert (cfg.wandb.job_type, cfg.logging.progress, cfg.wandb.run_id, cfg.wandb.group) == \
        ("sweep-trial", False, "abcd1234", "s1")


def test_a_wandb_trial_reads_the_parameters_wandb_agent_wrote_and_derives_the_split_from_the_sweep_id(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"wandb_version": 1, "learning_rate": {"value": 0.02},
                                      "_wandb": {"value": {}}}))
    env = {"WANDB_SWEEP_ID": "abc123", "WANDB_SWEEP_PARAM_PATH": str(params), "CVTRAIN_LEARNING_RATE": "0.1",
           "WANDB_MODE": "online"}
    cfg = wandb_trial_config(env)
    assert cfg.experiment.learning_rate == 0.02 and cfg.sources["learning_rate"] == "sweep"
    assert cfg.data.split_seed == split_seed_from_sweep_id("abc123")
    assert cfg.wandb.mode == "online" and "cvsweep" not in cfg.wandb.tags   # the W&B server runs this sweep
    assert (cfg.wandb.job_type, cfg.logging.progress) == ("sweep-trial", False)


def test_a_sweep_parameter_split_seed_wins_over_the_sweeps_seed(tmp_path):
    trial = Trial(sweep_id="s1", name="s1-1", state="running", params={"split_seed": 5}, run_id="r1",
                  output_dir=str(tmp_path / "t"))
    assert local_trial_config(trial, {}, env_file=None, split_seed=77).data.split_seed == 5
