"""The backbone's own normalisation: from timm's data config of the model built, stored in every
checkpoint, used by training and predict; ImageNet's for checkpoints from before, said once."""
import logging

import torch

from cvtrain import checkpoint as ckpt
from cvtrain import norm
from cvtrain.engine import train
from cvtrain.norm import Normalizer
from cvtrain.predict import predict_submission


def test_a_lite0_run_stores_mean_and_std_of_one_half_in_best_and_last(tiny):
    result = train(tiny(model_name="tf_efficientnet_lite0", epochs=1, keep_checkpoints="all"))
    for name in ("best.pt", "last.pt"):
        obj = torch.load(result.output_dir / "checkpoints" / name, map_location="cpu", weights_only=False)
        dc = obj["data_config"]
        assert dc["mean"] == [0.5, 0.5, 0.5] and dc["std"] == [0.5, 0.5, 0.5], name
        assert dc["interpolation"] == "bicubic" and isinstance(dc["crop_pct"], float)
        assert all(type(v) in (float, str, list) for v in dc.values())


def test_the_stored_data_config_loads_with_weights_only(tiny):
    result = train(tiny(epochs=1))  # keep_checkpoints=best: best.pt slimmed to weights
    obj = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    assert obj["data_config"]["mean"] == [0.5, 0.5, 0.5]  # test_resnet's pretrained config says 0.5 too


def test_training_normalises_with_the_models_own_mean_and_std():
    import timm

    x = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    lite = Normalizer("cpu", False, norm.model_data_config(timm.create_model("tf_efficientnet_lite0")))
    assert torch.allclose(lite(x), torch.ones(2, 3, 8, 8))  # (1 - 0.5) / 0.5
    resnet = Normalizer("cpu", False, norm.model_data_config(timm.create_model("resnet18")))
    assert torch.allclose(resnet(x)[0, :, 0, 0], (1 - torch.tensor(norm.IMAGENET_MEAN)) / torch.tensor(norm.IMAGENET_STD))


def test_predict_uses_and_says_the_stored_normalisation_and_falls_back_to_imagenet_once(tiny, demo_dir, tmp_path,
                                                                                        caplog):
    result = train(tiny(epochs=1))
    best = result.best_checkpoint
    with caplog.at_level(logging.INFO, logger="cvtrain"):
        predict_submission(str(best), str(demo_dir), output=str(tmp_path / "a.csv"), tta=["none"])
    assert f"normalisation: mean=(0.5, 0.5, 0.5) std=(0.5, 0.5, 0.5) (stored in {best})" in caplog.text
    # A checkpoint from before: no data_config; ImageNet's, said once however many times it is read.
    old = ckpt.read(best)
    del old["data_config"]
    torch.save(old, tmp_path / "old.pt")
    norm._warned_fallback = False
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cvtrain"):
        for i in range(2):
            predict_submission(str(tmp_path / "old.pt"), str(demo_dir), output=str(tmp_path / f"b{i}.csv"), tta=["none"])
    assert caplog.text.count("stores no normalisation") == 1
    assert "mean=(0.485, 0.456, 0.406) std=(0.229, 0.224, 0.225) (ImageNet's defaults)" in caplog.text
