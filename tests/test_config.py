import dataclasses

import pytest
from conftest import SECRET

from cvtrain.cli import UsageError, build_config, parse_argv
from cvtrain.config import Config, ConfigError, MixupConfig, mapping_layer, resolve
from cvtrain.validation import validate_config


def test_defaults_sit_in_one_place():
    cfg = Config()
    e = cfg.experiment
    assert (e.model_name, e.img_size, e.batch_size, e.learning_rate, e.epochs) == ("resnet34", 224, 32, 1e-3, 50)
    assert e.num_classes is None  # inferred from meta.csv or the data


def test_precedence_defaults_env_file_sweep_cli(tmp_path):
    (tmp_path / ".env").write_text("CVTRAIN_EPOCHS=3\nCVTRAIN_BATCH_SIZE=8\nCVTRAIN_IMG_SIZE=96\nCVTRAIN_SEED=5\n")
    (tmp_path / "c.yaml").write_text("experiment:\n  batch_size: 16\n  img_size: 128\nlearning_rate: 0.01\n")
    (tmp_path / "sweep.yaml").write_text("img_size:\n  value: 160\nlearning_rate:\n  value: 0.02\n")
    environ = {"CVTRAIN_SEED": "7", "WANDB_SWEEP_ID": "abc", "WANDB_SWEEP_PARAM_PATH": str(tmp_path / "sweep.yaml")}
    args = parse_argv(["--learning_rate=0.05", f"--config={tmp_path / 'c.yaml'}"])
    args.env_file = str(tmp_path / ".env")
    cfg = build_config(args, environ=environ)
    e = cfg.experiment
    assert e.epochs == 3 and cfg.sources["epochs"] == "env CVTRAIN_EPOCHS"          # .env over default
    assert e.seed == 7 and cfg.sources["seed"] == "env CVTRAIN_SEED"               # environment over .env
    assert e.batch_size == 16 and cfg.sources["batch_size"].startswith("file")     # file over env
    assert e.img_size == 160 and cfg.sources["img_size"] == "sweep"                # sweep over file
    assert e.learning_rate == 0.05 and cfg.sources["learning_rate"] == "cli"       # cli over sweep
    assert e.model_name == "resnet34" and cfg.sources["model_name"] == "default"


def test_validation_reports_every_problem_with_field_value_source_and_allowed():
    with pytest.raises(ConfigError) as err:
        resolve(mapping_layer({"optimizer": "adamww", "img_size": 4, "scheduler": "cosin",
                               "augment": {"rotate": 2.0}, "val_fraction": 1.5}, "file x.yaml"))
    msgs = err.value.problems
    text = "\n".join(msgs)
    assert len(msgs) == 5, text
    assert "optimizer='adamww' (from file x.yaml)" in text and "adamw" in text.split("optimizer=")[1]
    assert "img_size=4 (from file x.yaml): must be >= 16" in text
    assert "scheduler='cosin'" in text and "did you mean cosine" in text
    assert "augment.rotate=2.0" in text and "val_fraction=1.5" in text


def test_type_errors_name_the_value_and_hint_at_yaml_float_trap():
    with pytest.raises(ConfigError) as err:
        resolve(mapping_layer({"learning_rate": "fast", "epochs": 2.5, "amp": "maybe"}, "cli"))
    text = str(err.value)
    assert "learning_rate='fast' (from cli): must be a number" in text
    assert "epochs=2.5 (from cli): must be an integer" in text
    assert "amp='maybe' (from cli): must be True or False" in text


def test_unknown_timm_model_is_reported_with_close_matches():
    cfg = resolve(mapping_layer({"model_name": "resnet5O"}, "cli"))
    problems = validate_config(cfg)
    assert len(problems) == 1
    assert "model_name='resnet5O' (from cli): not a timm model" in problems[0]
    assert "resnet50" in problems[0]


def test_unknown_setting_in_a_file_names_close_matches():
    with pytest.raises(ConfigError, match="learning_rat: unknown setting .*did you mean learning_rate"):
        resolve(mapping_layer({"learning_rat": 0.1}, "file a.yaml"))


def test_api_key_never_part_of_logged_config_or_repr():
    cfg = resolve({"api_key": (SECRET, "env WANDB_API_KEY")})
    assert cfg.wandb.api_key == SECRET
    assert "api_key" not in cfg.to_flat_dict()
    assert SECRET not in repr(cfg) and SECRET not in str(cfg.to_flat_dict())


def test_a_sweep_cannot_set_the_api_key_or_the_server():
    with pytest.raises(ConfigError, match="api_key: cannot be set by a sweep"):
        resolve({"api_key": ("x", "sweep")})
    with pytest.raises(ConfigError, match="base_url: cannot be set by a sweep"):
        resolve({"base_url": ("http://elsewhere", "sweep")})
    cfg = resolve({"base_url": ("http://127.0.0.1:8080", "env WANDB_BASE_URL")})
    assert cfg.wandb.base_url == "http://127.0.0.1:8080" and "base_url" not in cfg.to_flat_dict()


def test_nested_groups_take_dicts_and_dotted_keys():
    cfg = resolve(mapping_layer({"mixup": "{'alpha': 0.2}", "augment.jpeg": "0.4"}, "cli"))
    assert cfg.experiment.mixup.alpha == 0.2 and cfg.experiment.mixup.cutmix_alpha == 0.0
    assert cfg.experiment.augment.jpeg == 0.4 and cfg.experiment.augment.rotate == 0.5


def test_unknown_cli_option_names_it_and_the_known_ones():
    with pytest.raises(UsageError) as err:
        parse_argv(["--learnin_rate=0.1"])
    text = str(err.value)
    assert "--learnin_rate: unknown option" in text and "did you mean learning_rate" in text
    assert "--batch_size" in text and "--model_name" in text


def test_env_template_documents_every_variable():
    from conftest import ROOT

    from cvtrain.config import ENV_PREFIX, KNOWN_KEYS, WANDB_ENV

    text = (ROOT / ".env.template").read_text()
    for name in KNOWN_KEYS:
        var = WANDB_ENV.get(name, ENV_PREFIX + name.upper())
        assert f"{var}=" in text, var
    for var in ("CVSWEEP_DIR", "CVSWEEP_LEASE_SECONDS", "WANDB_BASE_URL"):
        assert var in text


def test_command_line_reports_a_bad_model_together_with_the_other_problems(capsys):
    from cvtrain.cli import main

    assert main(["--model_name=resnett18", "--epochs=0", "--optimizer=adamm"]) == 2
    err = capsys.readouterr().err
    assert "model_name='resnett18' (from cli): not a timm model" in err and "resnet18" in err
    assert "epochs=0 (from cli): must be >= 1" in err and "optimizer='adamm'" in err


def test_augment_on_is_device_or_cpu_and_listed_in_help(capsys):
    from cvtrain.cli import main

    assert resolve().data.augment_on == "device"
    assert resolve(mapping_layer({"augment_on": "cpu"}, "cli")).data.augment_on == "cpu"
    with pytest.raises(ConfigError) as err:
        resolve(mapping_layer({"augment_on": "gpu"}, "cli"))
    assert "augment_on='gpu' (from cli): allowed: device, cpu" in str(err.value)
    assert main(["--help"]) == 0 and "augment_on" in capsys.readouterr().out


def test_an_odd_batch_size_with_mixup_or_cutmix_is_refused_naming_both():
    for mix in ({"alpha": 0.2}, {"cutmix_alpha": 1.0}):
        with pytest.raises(ConfigError) as err:
            resolve(mapping_layer({"batch_size": 33, "mixup": mix}, "sweep"))
        assert err.value.problems == [
            f"batch_size=33 (from sweep): must be even with mixup/cutmix (mixup={dataclasses.asdict(MixupConfig(**mix))} "
            "from sweep pairs each image with another of its batch); use 34 or 32"]
    assert resolve(mapping_layer({"batch_size": 33}, "sweep")).experiment.batch_size == 33  # no mixup: any size
