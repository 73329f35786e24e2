"""The recipe's settings: the document transforms' probabilities and strengths, checked before torch trains."""
import pytest

from cvtrain.config import ConfigError, mapping_layer, resolve
from cvtrain.transforms import TRANSFORMS

NEW = ("rotate_any", "brightness", "contrast", "gamma", "perspective", "downscale", "shadow")


def test_help_lists_every_document_transform_and_its_strength(capsys):
    from cvtrain.cli import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for t in TRANSFORMS:
        assert f"--augment.{t.name} " in out and f"--augment.{t.strength} " in out
    assert [t.name for t in TRANSFORMS] == list(NEW)


def test_document_transforms_are_off_by_default_and_set_by_dotted_keys_or_a_dict():
    cfg = resolve()
    assert all(getattr(cfg.experiment.augment, op) == 0.0 for op in NEW)
    cfg = resolve(mapping_layer({"augment.rotate_any": 0.4, "augment.rotate_any_max": 45}, "cli"))
    assert cfg.experiment.augment.rotate_any == 0.4 and cfg.experiment.augment.rotate_any_max == 45.0
    cfg = resolve(mapping_layer({"augment": "{'shadow': 0.2, 'shadow_max': 0.8}"}, "sweep"))
    assert (cfg.experiment.augment.shadow, cfg.experiment.augment.shadow_max) == (0.2, 0.8)


@pytest.mark.parametrize("key,value,says", [
    ("augment.rotate_any_max", 200, "augment.rotate_any_max=200.0 (from cli): must be in (0, 180]"),
    ("augment.rotate_any_max", 0, "must be in (0, 180]"),
    ("augment.brightness_max", 1.0, "augment.brightness_max=1.0 (from cli): must be in [0, 1)"),
    ("augment.downscale_min", 0, "augment.downscale_min=0.0 (from cli): must be in (0, 1]"),
    ("augment.gamma_max", -0.1, "must be in [0, 2]"),
    ("augment.shadow", 1.5, "augment.shadow=1.5 (from cli): a probability, must be in [0, 1]"),
])
def test_a_strength_out_of_range_names_the_value_the_source_and_the_range(key, value, says):
    with pytest.raises(ConfigError) as err:
        resolve(mapping_layer({key: value}, "cli"))
    assert says in str(err.value)


def test_an_unknown_transform_name_says_the_closest_one(capsys):
    from cvtrain.cli import main

    assert main(["--augment.rotat_any=0.5", "--augment.brigthness=0.2"]) == 2
    err = capsys.readouterr().err
    assert "augment.rotat_any: unknown setting (from cli) (did you mean rotate_any" in err
    assert "augment.brigthness: unknown setting (from cli) (did you mean brightness" in err


def test_a_bad_strength_on_the_command_line_is_one_line_and_exit_2(capsys):
    from cvtrain.cli import main

    assert main(["--augment.perspective_max=1.2"]) == 2
    err = capsys.readouterr().err
    assert "augment.perspective_max=1.2 (from cli): must be in [0, 1)" in err
