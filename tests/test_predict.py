import csv
import logging
import os
import subprocess

import pytest
import torch
from conftest import PY, ROOT

from cvtrain import checkpoint as ckpt
from cvtrain.engine import train
from cvtrain.predict import load_for_inference, predict_submission


def test_submission_follows_sample_submission_order_and_shape(tiny, demo_dir, tmp_path):
    result = train(tiny(epochs=1))
    out = predict_submission(str(result.best_checkpoint), str(demo_dir), output=str(tmp_path / "sub.csv"),
                             tta=["none", "rot90", "hflip"], cache_dir=str(tmp_path / "c"))
    sample = list(csv.DictReader((demo_dir / "sample_submission.csv").open()))
    sub = list(csv.DictReader(out.open()))
    assert [r["ID"] for r in sub] == [r["ID"] for r in sample]
    assert list(sub[0]) == ["ID", "target"]
    assert all(0 <= int(r["target"]) < 17 for r in sub)


def test_predict_cli_reports_missing_checkpoint(tmp_path, demo_dir):
    from cvtrain.cli import main

    assert main(["predict", f"--checkpoint={tmp_path / 'nope.pt'}", f"--data_dir={demo_dir}"]) == 2


def test_tta_views_go_through_the_model_together_and_average_as_one_view_at_a_time():
    import timm
    import torch

    from cvtrain.norm import Normalizer
    from cvtrain.predict import predict_probs
    from cvtrain.tta import apply_view

    model = timm.create_model("test_resnet", num_classes=5).eval()
    calls = []
    model.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    images = torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8).numpy()
    norm = Normalizer(torch.device("cpu"), False)
    views = ["none", "rot90", "rot180", "hflip"]
    got = predict_probs(model, images, norm, views, batch_size=16)
    assert calls == [16, 16, 8]  # 4 images x 4 views, twice, then the last 2 images' 8 views
    with torch.no_grad():
        x = norm(torch.from_numpy(images).permute(0, 3, 1, 2))
        want = sum(torch.softmax(model(apply_view(x, v)), 1) for v in views) / len(views)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


class _RunsCode:
    """Unpickling this runs ``touch MARKER``: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_predict_refuses_a_checkpoint_that_runs_code_when_opened(tmp_path, demo_dir):
    marker, evil = tmp_path / "code-ran", tmp_path / "downloaded.pt"
    torch.save({"model": _RunsCode(marker), "config": {}, "format": 1}, evil)
    proc = subprocess.run([PY, "-m", "cvtrain", "predict", f"--checkpoint={evil}", f"--data_dir={demo_dir}",
                           f"--output={tmp_path / 'sub.csv'}"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert not marker.exists(), "opening the checkpoint ran its code"
    assert f"checkpoint {evil} holds objects other than tensors" in proc.stderr and "posix.system" in proc.stderr
    assert not (tmp_path / "sub.csv").exists()


def test_resume_from_a_checkpoint_outside_the_runs_directory_never_runs_its_code(tiny, tmp_path):
    marker, evil = tmp_path / "code-ran", tmp_path / "elsewhere" / "last.pt"
    evil.parent.mkdir()
    torch.save({"model": _RunsCode(marker), "state": {}}, evil)
    with pytest.raises(ckpt.UnsafeCheckpointError, match="opening it could run code"):
        train(tiny(epochs=1), resume=str(evil))
    assert not marker.exists()


def test_every_checkpoint_is_plain_data_and_carries_what_inference_needs(tiny):
    # 20 outputs for 17 classes: the class count cannot be guessed from the class names.
    result = train(tiny(epochs=2, keep_checkpoints="all", num_classes=20, img_size=32, resize="stretch"))
    for name in ("best.pt", "last.pt"):
        obj = torch.load(result.output_dir / "checkpoints" / name, weights_only=True)  # raises on anything else
        assert obj["inference"] == {"num_classes": 20, "class_names": obj["inference"]["class_names"],
                                    "img_size": 32, "resize": "stretch"}
        assert len(obj["inference"]["class_names"]) == 17
    model, cfg, names = load_for_inference(result.best_checkpoint, torch.device("cpu"))
    assert model.get_classifier().out_features == 20 and len(names) == 17


def test_a_checkpoint_from_before_the_inference_facts_still_loads_with_a_note(tiny, tmp_path, caplog):
    result = train(tiny(epochs=1))
    obj = torch.load(result.best_checkpoint, weights_only=True)
    info = obj.pop("inference")
    old = tmp_path / "old.pt"
    torch.save({**obj, "class_names": info["class_names"]}, old)
    with caplog.at_level(logging.INFO, logger="cvtrain.predict"):
        model, _, names = load_for_inference(old, torch.device("cpu"))
    assert model.get_classifier().out_features == 17 and names == info["class_names"]
    assert "predates the inference facts" in caplog.text
