"""A run's predictions on the images it did not train on (what finalize scores), from its final model."""
import csv

import numpy as np
import pytest
import torch

from cvtrain import checkpoint as ckpt
from cvtrain import data as D
from cvtrain.engine import train
from cvtrain.metrics import macro_f1
from cvtrain.norm import Normalizer, stored_data_config
from cvtrain.predict import load_for_inference, predict_probs

VIEWS = ["none", "rot180"]


def read(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    probs = np.array([[float(r[k]) for k in r if k.startswith("p")] for r in rows])
    return [r["ID"] for r in rows], [int(r["target"]) for r in rows], probs


def probs_of(checkpoint, images, views):
    model, _, _ = load_for_inference(checkpoint, torch.device("cpu"))
    dc = stored_data_config(ckpt.read(checkpoint, "cpu"), str(checkpoint))  # the backbone's own mean/std
    return predict_probs(model, images, Normalizer(torch.device("cpu"), False, dc), views, 64).numpy()


@pytest.fixture
def ended(tiny, tmp_path):
    cfg = tiny(epochs=2, keep_checkpoints="all", save_predictions=True, tta=VIEWS, holdout=0.2)
    return cfg, train(cfg)


def test_held_out_predictions_are_the_final_models_with_the_submissions_views(ended, tmp_path):
    cfg, result = ended
    out = result.output_dir
    index = D.load_index(cfg.data)
    position = {i: j for j, i in enumerate(index.image_ids())}
    cache = D.load_or_build_cache(index.paths, 32, cfg.data.resize, cfg.data.cache_dir, progress=False).array
    ids, targets, single = read(out / "val_predictions_single.csv")
    _, _, tta = read(out / "val_predictions.csv")
    images = cache[[position[i] for i in ids]]
    last, best = out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"
    assert np.allclose(single, probs_of(last, images, ["none"]), atol=1e-5)
    assert np.allclose(tta, probs_of(last, images, VIEWS), atol=1e-5)
    assert np.abs(tta - single).max() > 1e-4   # the views change the prediction
    assert macro_f1(targets, single.argmax(1)) == pytest.approx(result.history[-1]["val_f1"])
    if result.summary.get("best_epoch") != 2:
        assert not np.allclose(single, probs_of(best, images, ["none"]), atol=1e-5)
    held, _, _ = read(out / "holdout_predictions.csv")
    assert len(held) == round(0.2 * len(index.labels)) and not set(held) & set(ids)


def test_a_run_resumed_after_its_last_epoch_ends_with_its_predictions(ended, tiny):
    cfg, result = ended
    out = result.output_dir
    before = read(out / "val_predictions.csv")
    for name in ("val_predictions.csv", "val_predictions_single.csv", "holdout_predictions.csv"):
        (out / name).unlink(missing_ok=True)
    again = train(cfg, resume="auto")   # no epoch left to run: it used to fail on the missing epoch's softmax
    assert again.state == "finished" and again.summary["epochs_completed"] == 2
    after = read(out / "val_predictions.csv")
    assert after[0] == before[0] and np.allclose(after[2], before[2], atol=1e-6)
    assert (out / "holdout_predictions.csv").is_file()
