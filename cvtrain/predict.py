"""Write a submission CSV in ``sample_submission.csv`` order from a checkpoint, with optional TTA."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import ExperimentConfig, mapping_layer, resolve
from .data import DataError, check_bad_images, check_ids, load_or_build_cache, resolve_image
from .device import select_device
from .model import build_model
from .norm import Normalizer, describe, stored_data_config
from .notices import say_once
from .tta import predict_probs
from .tta_auto import choose_tta

log = logging.getLogger(__name__)


def load_for_inference(checkpoint: str | Path, device: torch.device):
    """(model in eval mode, resolved config, class names) from a checkpoint, read as data only."""
    return _inference_model(ckpt.read(checkpoint, "cpu"), checkpoint, device)


def _inference_model(obj: dict, checkpoint: str | Path, device: torch.device):
    """:func:`load_for_inference` on a checkpoint already read (``obj``) from ``checkpoint``."""
    cfg = resolve(mapping_layer(dict(obj["config"]), f"checkpoint {checkpoint}"))
    exp: ExperimentConfig = cfg.experiment
    exp.pretrained = False  # the checkpoint holds the weights
    info = obj.get("inference") or _older_checkpoint_info(obj, cfg, checkpoint)
    model = build_model(exp, info["num_classes"])
    model.load_state_dict(obj["model"])
    return model.to(device).eval(), cfg, info["class_names"]


def _older_checkpoint_info(obj: dict, cfg, checkpoint) -> dict:
    """Checkpoints from before the ``inference`` facts: the class count from the config or the class names."""
    say_once(log, "%s predates the inference facts in checkpoints: the class count comes from its "
             "config and class names", checkpoint)
    names = list(obj.get("class_names", []))
    return {"num_classes": cfg.experiment.num_classes or len(names), "class_names": names,
            "img_size": cfg.experiment.img_size, "resize": cfg.data.resize}


def read_test_set(root: str | Path, test_dir: str = "test", sample_submission: str = "sample_submission.csv"):
    """(header, IDs, image paths) of the test set, in ``sample_submission.csv`` order."""
    root = Path(root)
    sub_path = root / sample_submission
    if not sub_path.is_file():
        raise FileNotFoundError(f"{sub_path} does not exist: predictions are written in its order")
    with sub_path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or ["ID", "target"]
        ids = [r[fields[0]] for r in reader]
    problems = check_ids(sub_path, ids, unique=False)
    if problems:
        raise DataError("\n".join(problems))
    return fields[:2], ids, [str(resolve_image(root / test_dir, i)) for i in ids]


def decode_test_set(data_dir: str | Path, img_size: int, resize: str, *, test_dir: str = "test",
                    sample_submission: str = "sample_submission.csv", cache_dir: str | None = None,
                    skip_bad_images: bool = False, progress: bool = False):
    """(header, IDs, decoded images) of the test set, through the decoded-image cache.

    An unreadable test image raises naming it, or with ``skip_bad_images`` is warned about and
    predicted as a blank page: a submission needs a row for every ID.
    """
    fields, ids, paths = read_test_set(data_dir, test_dir, sample_submission)
    decoded = load_or_build_cache(paths, img_size, resize, cache_dir, progress=progress)
    check_bad_images(decoded.bad, skip=skip_bad_images, what="test image(s) (predicted as a blank page)")
    return fields, ids, decoded


def test_probs(model, data_dir: str | Path, img_size: int, resize: str, views: list[str], device: torch.device,
               *, test_dir: str = "test", sample_submission: str = "sample_submission.csv",
               cache_dir: str | None = None, batch_size: int = 64, progress: bool = False,
               skip_bad_images: bool = False, data_config: dict | None = None):
    """(header, IDs, softmax probabilities averaged over ``views``) for the test set, normalised with
    ``data_config``'s mean/std (:mod:`cvtrain.norm`; None: ImageNet's)."""
    fields, ids, decoded = decode_test_set(data_dir, img_size, resize, test_dir=test_dir,
                                           sample_submission=sample_submission, cache_dir=cache_dir,
                                           skip_bad_images=skip_bad_images, progress=progress)
    return fields, ids, predict_probs(model, decoded.array, Normalizer(device, False, data_config), views, batch_size)


def write_submission(path: str | Path, fields: list[str], ids: list[str], preds) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(fields[:2])
        w.writerows(zip(ids, (int(p) for p in preds)))
    return out


def predict_submission(checkpoint: str, data_dir: str, output: str = "submission.csv", test_dir: str = "test",
                       sample_submission: str = "sample_submission.csv", tta=None, batch_size: int = 64,
                       device: str = "auto", cache_dir: str | None = None, say=None) -> Path:
    """``tta="auto"``: the views that score best on the checkpoint's shifted validation set (``say`` hears which)."""
    dev = select_device(device)
    obj = ckpt.read(checkpoint, "cpu")  # read once: the model and its stored normalisation
    model, cfg, _ = _inference_model(obj, checkpoint, dev)
    data_config = stored_data_config(obj, str(checkpoint))
    log.info("normalisation: %s", describe(data_config))
    if tta == "auto":
        if cache_dir:
            cfg.data.cache_dir = cache_dir
        choice = choose_tta(model, cfg, dev, batch_size=batch_size, data_config=data_config)
        (say or log.info)(choice.describe())
        tta = choice.views
    views = cfg.experiment.tta if tta is None or tta is True else (["none"] if tta is False else list(tta))
    fields, ids, probs = test_probs(model, data_dir, cfg.experiment.img_size, cfg.data.resize, views, dev,
                                    test_dir=test_dir, sample_submission=sample_submission,
                                    cache_dir=cache_dir or cfg.data.cache_dir, batch_size=batch_size, progress=True,
                                    data_config=data_config)
    return write_submission(output, fields, ids, probs.argmax(1).tolist())
