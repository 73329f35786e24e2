"""A run's predictions on the images it did not train on (what finalize scores), from its final model."""
import csv

import numpy as np
import pytest
import torch

from cvtrain import checkpoint as ckpt
from cvtrain import data as D
from cvtrain import valshift as V
from cvtrain.engine import train
from cvtrain.metrics import macro_f1
from cvtrain.norm import Normalizer, stored_data_config
from cvtrain.predict import load_for_inference, predict_probs
from cvtrain.tta import TTA_VIEWS

VIEWS = ["none", "rot180"]
PROFILE = {"rotate_any": 0.5, "brightness": 1.2, "blur": 1.0}


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
    cfg = tiny(epochs=2, keep_checkpoints="all", save_predictions=True, tta=VIEWS, holdout=0.2, val_shift=PROFILE)
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
    held, _, held_probs = read(out / "holdout_predictions.csv")
    assert len(held) == round(0.2 * len(index.labels)) and not set(held) & set(ids)
    # the holdout's test-like copies, drawn as the validation's (by image ID), with the same views
    held_shift_ids, _, held_shift = read(out / "holdout_shift_predictions.csv")
    held_copies = V.shifted_copies(cache, np.array([position[i] for i in held]), held, PROFILE,
                                   cfg.experiment.val_shift_seed, torch.device("cpu")).permute(0, 2, 3, 1).numpy()
    assert held_shift_ids == held and np.allclose(held_shift, probs_of(last, held_copies, VIEWS), atol=1e-5)

    # the shifted copies the epochs validated on (val_shift), predicted with the same views
    shift_ids, shift_targets, shifted = read(out / "val_shift_predictions.csv")
    assert shift_ids == ids and shift_targets == targets
    copies = V.shifted_copies(cache, np.array([position[i] for i in ids]), ids, PROFILE, cfg.experiment.val_shift_seed,
                              torch.device("cpu")).permute(0, 2, 3, 1).numpy()
    assert np.allclose(shifted, probs_of(last, copies, VIEWS), atol=1e-5) and np.abs(shifted - tta).max() > 1e-3

    # every view's softmax, from which the files' means come (finalize --tta auto chooses among them)
    with np.load(out / "view_predictions.npz") as z:
        got = {k: z[k] for k in z.files}
    assert list(got["views"]) == list(TTA_VIEWS) and list(got["val_ids"]) == ids
    assert got["val"].shape == (len(TTA_VIEWS), len(ids), single.shape[1])
    for key, x in (("val", images), ("val_shift", copies)):
        assert np.allclose(got[key][TTA_VIEWS.index("rot90")], probs_of(last, x, ["rot90"]), atol=1e-5)
    assert np.allclose(got["val_shift"][[0, 2]].mean(0), shifted, atol=1e-5)
    assert np.allclose(got["holdout"][[0, 2]].mean(0), held_probs, atol=1e-5) and list(got["holdout_ids"]) == held
    assert np.allclose(got["holdout_shift"][[0, 2]].mean(0), held_shift, atol=1e-5)
    test_ids, _, test = read_test(out / "test_predictions.csv")
    assert list(got["test_ids"]) == test_ids and np.allclose(got["test"][[0, 2]].mean(0), test, atol=1e-5)


def read_test(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["ID"] for r in rows], None, np.array([[float(r[k]) for k in r if k.startswith("p")] for r in rows])


def test_a_run_resumed_after_its_last_epoch_ends_with_its_predictions(ended, tiny):
    cfg, result = ended
    out = result.output_dir
    before, before_shift = read(out / "val_predictions.csv"), read(out / "val_shift_predictions.csv")
    for name in ("val_predictions.csv", "val_predictions_single.csv", "holdout_predictions.csv",
                 "val_shift_predictions.csv", "holdout_shift_predictions.csv", "view_predictions.npz"):
        (out / name).unlink(missing_ok=True)
    again = train(cfg, resume="auto")   # no epoch left to run: it used to fail on the missing epoch's softmax
    assert again.state == "finished" and again.summary["epochs_completed"] == 2
    after = read(out / "val_predictions.csv")
    assert after[0] == before[0] and np.allclose(after[2], before[2], atol=1e-6)
    assert (out / "holdout_predictions.csv").is_file() and (out / "view_predictions.npz").is_file()
    assert (out / "holdout_shift_predictions.csv").is_file()
    assert np.allclose(read(out / "val_shift_predictions.csv")[2], before_shift[2], atol=1e-6)
