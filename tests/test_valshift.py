"""val_shift: the setting, the shifted validation copies and what a run logs with them."""
import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import PY, ROOT

from cvtrain import valshift as V
from cvtrain.config import ConfigError, mapping_layer, resolve
from cvtrain.engine import train
from cvtrain.shift_profile import dump

PROFILE = {"rotate_any": 0.5, "brightness": 1.2, "blur": 1.0, "noise": 4.0, "jpeg": 60}


def _pages(n=12, size=48, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full((n, size, size, 3), 240, np.uint8)
    for i in range(n):
        for r in range(6, size - 6, 6):
            img[i, r:r + 2, 4:4 + int(rng.integers(10, size - 8))] = 40
    return img


def test_val_shift_takes_a_dict_dotted_keys_or_a_profile_file(tmp_path):
    cfg = resolve(mapping_layer({"val_shift": "{'blur': 1.2, 'rotate_any': 0.3}"}, "cli"),
                  mapping_layer({"val_shift.noise": "5"}, "cli"))
    assert cfg.experiment.val_shift == {"blur": 1.2, "rotate_any": 0.3, "noise": 5.0}
    f = tmp_path / "shift.yaml"
    f.write_text(dump({"brightness": 1.3, "blur": 0.8}))
    assert resolve(mapping_layer({"val_shift": str(f)}, "cli")).experiment.val_shift == {"brightness": 1.3, "blur": 0.8}
    assert resolve().experiment.val_shift == {}


@pytest.mark.parametrize("value, words", [
    ({"blurr": 1.0}, "val_shift.blurr: unknown key"),
    ({"rotate_any": 1.5}, "val_shift.rotate_any=1.5 (from test): must be in [0, 1]"),
    ({"downscale": 0}, "must be in (0, 1]"),
    ("missing.yaml", "no such profile file"),
])
def test_bad_val_shift_is_one_line_naming_key_and_range(value, words):
    with pytest.raises(ConfigError) as err:
        resolve(mapping_layer({"val_shift": value}, "test"))
    assert len(err.value.problems) == 1 and words in err.value.problems[0]


def test_each_image_gets_the_same_copy_whatever_its_batch_order_or_device_batching():
    images = _pages(12)
    ids = [f"img{i}.jpg" for i in range(12)]
    a = V.shifted_copies(images, np.arange(12), ids, PROFILE, seed=7, device=torch.device("cpu"), batch=5)
    order = np.array([11, 3, 0, 7, 1, 2, 4, 5, 6, 8, 9, 10])
    b = V.shifted_copies(images, order, [ids[j] for j in order], PROFILE, seed=7, device=torch.device("cpu"), batch=4)
    assert torch.equal(a[order], b)
    c = V.shifted_copies(images, np.arange(12), ids, PROFILE, seed=8, device=torch.device("cpu"))
    assert not torch.equal(a, c)  # another val_shift_seed: other copies
    assert not torch.equal(a, torch.from_numpy(images).permute(0, 3, 1, 2))


def test_a_strength_changes_what_it_names_and_only_that():
    images = _pages(8)
    ids = [str(i) for i in range(8)]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    dark = V.apply(x, V.draw({"brightness": 0.5}, ids, 0, 48))
    assert dark.float().mean() < 0.8 * x.float().mean()
    rot = V.draw({"rotate_any": 0.5}, ids, 0, 48)
    out = V.apply(x, rot)
    for i in range(8):
        assert torch.equal(out[i], x[i]) != bool(rot.rotate[i])


def test_a_tiny_run_logs_val_shift_f1_every_epoch_and_best_in_summary(tiny):
    res = train(tiny(val_shift=PROFILE, epochs=2))
    assert all("val_shift_f1" in h and "val_shift_acc" in h and "val_shift_loss" in h for h in res.history)
    best = max(h["val_shift_f1"] for h in res.history)
    summary = json.loads((res.output_dir / "summary.json").read_text())
    assert summary["best_val_shift_f1"] == pytest.approx(best)
    assert res.history[-1]["best_val_shift_f1"] == pytest.approx(best)


def test_the_shifted_set_is_the_same_in_two_trials_with_other_seeds(demo_dir, cache_dir, tiny):
    """Two trials (other training seeds, other worker counts) score the same copies: the set hangs on IDs."""
    from cvtrain.engine import _setup

    a = _setup(tiny(val_shift=PROFILE, seed=1, split_seed=0, num_workers=0), None)
    b = _setup(tiny(val_shift=PROFILE, seed=2, split_seed=0, num_workers=1), None)
    assert torch.equal(a.shifted_val.x, b.shifted_val.x) and torch.equal(a.shifted_val.y, b.shifted_val.y)


def test_cli_dotted_val_shift_writes_history_and_summary(demo_dir, cache_dir, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([PY, "-m", "cvtrain", f"--data_dir={demo_dir}", "--model_name=test_resnet", "--img_size=32",
                           "--batch_size=16", "--epochs=1", f"--output_dir={out}", f"--cache_dir={cache_dir}",
                           "--num_workers=0", "--progress=False", "--mode=offline", "--val_shift={'blur': 1.0}",
                           "--val_shift.rotate_any=0.5"],
                          env={"PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path),
                               "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["best_val_shift_f1"] <= 1 and "val_shift_f1" in proc.stderr


def test_cli_bad_val_shift_exits_2_with_one_line(demo_dir, tmp_path):
    proc = subprocess.run([PY, "-m", "cvtrain", f"--data_dir={demo_dir}", "--val_shift.blur=99"],
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "val_shift.blur=99" in proc.stderr and "[0, 8]" in proc.stderr


def test_a_local_sweep_on_best_val_shift_f1_validates_and_ranks_by_it(tmp_path, demo_dir, cache_dir):
    import yaml
    from sweep_helpers import cvsweep, tiny_params

    cfg = {"name": "shifted", "method": "grid", "metric": {"name": "best_val_shift_f1", "goal": "maximize"},
           "parameters": tiny_params(demo_dir, cache_dir, learning_rate={"values": [0.001, 0.01, 0.03]},
                                     val_shift={"parameters": {"rotate_any": {"value": 0.5}, "blur": {"value": 1.0}}})}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(cfg))
    state = tmp_path / "state"
    assert cvsweep(["validate", str(f)], state).returncode == 0
    made = cvsweep(["create", str(f), "--backend", "local"], state)
    assert made.returncode == 0, made.stderr
    sweep_id = made.stdout.strip().splitlines()[-1]
    res = cvsweep(["agent", sweep_id, "--gpus", "none", "--workers", "1"], state)
    assert res.returncode == 0, res.stderr[-3000:]
    board = json.loads(cvsweep(["leaderboard", sweep_id, "--format", "json"], state).stdout)
    assert len(board) == 3 and board[0]["metric_name"] == "best_val_shift_f1"
    assert [r["metric"] for r in board] == sorted((r["metric"] for r in board), reverse=True)
    assert all("best_val_f1" in r["also"] for r in board)
    runs = json.loads(cvsweep(["runs", sweep_id, "--format", "json"], state).stdout)
    assert all({"best_val_f1", "best_val_shift_f1"} <= set(r) for r in runs)
    page = tmp_path / "report.html"
    made = cvsweep(["report", sweep_id, "-o", str(page)], state)
    assert made.returncode == 0, made.stderr
    html = page.read_text()
    assert 'id="shift-curves"' in html and 'id="clean-vs-shifted"' in html


def test_predict_tta_auto_picks_views_on_the_shifted_validation_and_says_by_how_much(tiny, tmp_path):
    res = train(tiny(val_shift=PROFILE, epochs=1, output_dir=str(tmp_path / "run")))
    out = tmp_path / "sub.csv"
    proc = subprocess.run([PY, "-m", "cvtrain", "predict", f"--checkpoint={res.best_checkpoint}",
                           f"--data_dir={tiny().data.data_dir}", f"--output={out}", "--tta=auto",
                           f"--cache_dir={tiny().data.cache_dir}", "--device=cpu"],
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if "tta auto: views none" in ln)
    assert "shifted validation" in line and "without test-time views (+" in line
    assert out.read_text().startswith("ID,target")


def test_greedy_views_adds_a_view_only_when_it_helps():
    from cvtrain.tta_auto import greedy_views

    y = np.array([0, 1, 0, 1])
    good = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])
    weak = np.array([[0.4, 0.6], [0.1, 0.9], [0.6, 0.4], [0.6, 0.4]])
    views, f1, base = greedy_views({"none": weak, "rot90": good, "rot180": 1 - good}, y)
    assert views == ["none", "rot90"] and f1 == 1.0 and base < 1.0


def test_a_sweep_ranked_by_the_shifted_metric_without_val_shift_is_a_violation(demo_dir, cache_dir):
    from sweep_helpers import tiny_params

    from agent.validate import validate_sweep_config

    cfg = {"method": "random", "metric": {"name": "best_val_shift_f1", "goal": "maximize"},
           "parameters": tiny_params(demo_dir, cache_dir)}
    assert any("logged only with val_shift on" in p for p in validate_sweep_config(cfg))
    cfg["parameters"]["val_shift"] = {"value": {"blur": 1.0}}
    assert validate_sweep_config(cfg) == []
    cfg["parameters"]["val_shift"] = {"value": {"blur": 99}}
    assert any("val_shift.blur=99" in p for p in validate_sweep_config(cfg))
