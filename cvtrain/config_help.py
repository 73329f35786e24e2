"""What each setting means: ``cvtrain --help`` and the comments of .env.template."""
from __future__ import annotations

from dataclasses import fields

from . import transforms
from .coerce import base_type
from .config import FIELD_TYPES, GROUPS, NESTED, NESTED_FIELDS, WANDB_ENV, Config
from .validation import SECRET_FIELDS

#: One line of meaning per setting: `cvtrain --help`, and the comment above it in .env.template.
HELP = {
    # wandb
    "api_key": 'API key: never logged, never written to a run config or any file cvsweep writes. Empty is fine '
               'after `wandb login`: the key in ~/.netrc is found the way wandb finds it.',
    "project": "W&B project for runs and sweeps",
    "entity": "W&B entity (team or user); empty: your default",
    "mode": 'online | offline | disabled; empty: online when W&B credentials are found (env, .env, ~/.netrc, wandb '
            'settings), else offline (a trial of a W&B sweep says so loudly)',
    "tags": "comma-separated run tags",
    "group": "W&B run group",
    "job_type": "W&B job type of training runs",
    "run_name": "run name; empty: made from the config (model-lr-bs-size-seed)",
    "run_id": "W&B run id to continue on --resume",
    "parent_sweep": "finalize runs: the sweep their configuration comes from (set by cvsweep finalize)",
    "log_artifacts": "log best/last checkpoints as W&B model artifacts",
    "save_requirements": "save W&B's list of installed pip packages with each run (sweep workers turn it off)",
    # experiment
    "model_name": "timm model name (timm.list_models())",
    "pretrained": "start from pretrained weights (pretrained_dir or pretrained_path offline, else the hub/HF cache)",
    "pretrained_path": "local weights file for pretrained=True on machines without internet",
    "pretrained_dir": "folder of weight files named after the timm model (NAME.safetensors, NAME.pth or NAME/) for "
                      "pretrained=True without the hub: each model of a sweep finds its own",
    "num_classes": "empty: inferred from meta.csv or the data",
    "img_size": "square input size in pixels",
    "batch_size": "batch size",
    "learning_rate": "peak learning rate",
    "epochs": "epochs",
    "optimizer": "sgd | momentum | adam | adamw | nadam | radam | rmsprop | lamb | lion (timm create_optimizer_v2)",
    "weight_decay": "weight decay",
    "momentum": "momentum (sgd/momentum/rmsprop)",
    "scheduler": "cosine | step | multistep | plateau | poly | tanh | none (timm create_scheduler_v2)",
    "warmup_epochs": "linear warmup epochs",
    "warmup_lr": "learning rate at the start of warmup",
    "min_lr": "floor of the schedule",
    "label_smoothing": "label smoothing in [0, 1)",
    "drop_rate": "classifier dropout",
    "grad_clip": "max gradient norm; empty: off",
    "mixup": "timm Mixup/CutMix as a dict, e.g. {'alpha': 0.2}; keys below",
    "augment": "augmentation probabilities and strengths as a dict, e.g. {'rotate': 0.5, 'rotate_any': 0.3}; keys below",
    "tta": "test-time views for predict: none, rot90, rot180, rot270, hflip, vflip",
    "val_shift": "a shifted validation set: a profile file (cvsweep shift -o FILE) or a dict of strengths, e.g. "
                 "{'rotate_any': 0.5, 'blur': 1.2}; keys rotate_any, brightness, contrast, downscale, blur, noise, "
                 "jpeg (see cvtrain/shift_profile.py); empty: off. Logs val_shift_f1 and best_val_shift_f1",
    "val_shift_seed": "seed of the shifted validation copies (with each image's ID)",
    "seed": "random seed",
    "device": "auto | cpu | cuda | cuda:N",
    "amp": "mixed precision; empty: on where the device supports it (CUDA), off on CPU",
    "amp_dtype": "bf16 | fp16 (fp16 adds a gradient scaler)",
    "channels_last": "channels_last memory format on CUDA",
    # data
    "data_dir": "dataset root: competition layout (train.csv, meta.csv, train/) or ImageFolder",
    "train_csv": "competition CSV with ID,target",
    "meta_csv": "CSV with target,class_name",
    "image_dir": "folder of training images",
    "val_fraction": "validation fraction of a plain split",
    "stratify": "stratified split by class",
    "folds": "0: plain split; K >= 2: K-fold",
    "fold": "which fold validates when folds >= 2",
    "split_seed": "seed of the split and folds; empty: the run's seed "
                  "(finalize fixes it so configurations share folds)",
    "holdout": "fraction kept out of every split and fold, for one unbiased score at the end "
               "(cvsweep create --holdout sets it for a whole sweep); 0: none",
    "holdout_seed": "seed of the holdout slice (the same for every trial of a sweep)",
    "test_dir": "folder of test images (predict, save_predictions)",
    "sample_submission": "CSV listing the test IDs in submission order",
    "resize": "pad (keep aspect ratio, white padding) | stretch",
    "num_workers": 'DataLoader worker processes (they only slice the decoded cache when augment_on=device; kept '
                   'across epochs)',
    "cache_dir": "decoded-image cache; empty: $XDG_CACHE_HOME/cvtrain or ~/.cache/cvtrain",
    "skip_bad_images": "train without unreadable images (with a warning) instead of stopping",
    # logging
    "log_interval": "batches between batch-loss logs",
    "system_interval": "seconds between GPU/CPU/RAM samples",
    "progress": "progress bars",
    # paths
    "output_root": "parent of run output directories",
    "output_dir": "this run's output directory; empty: <output_root>/<run name>",
    "checkpoint_dir": "empty: <output_dir>/checkpoints",
    "save_last": "save last.pt every epoch (needed for --resume)",
    "keep_checkpoints": "what an ended run keeps: best (only best.pt, as weights + config for predict: a third of "
                        "an AdamW checkpoint) | last (last.pt, whole training state) | all | none; a preempted run "
                        "keeps last.pt to resume",
    "save_predictions": "at the end, write the final epoch's softmax on the validation images (val_predictions.csv; "
                        "their val_shift copies: val_shift_predictions.csv) and on the test set with the tta views "
                        "(test_predictions.csv), every view's in view_predictions.npz; cvsweep finalize sets it",
    "base_url": 'Self-hosted W&B Server: its URL (trainer, agents, API and `wandb sweep` all use it; `wandb login '
                '--host=URL` stores its key in ~/.netrc under host:port). Never logged, never set by a sweep.',
    "augment_on": 'where augmentation runs: device (batched on the training device, the GPU; default) | cpu (per '
                  'sample in the DataLoader workers, the old path: same strengths, different random draws)',
    # nested
    "mixup.alpha": "mixup alpha; 0 disables mixup",
    "mixup.cutmix_alpha": "cutmix alpha; 0 disables cutmix",
    "mixup.prob": "probability of applying mixup or cutmix per batch",
    "mixup.switch_prob": "probability of cutmix instead of mixup when both are on",
    "augment.rotate": "probability of a 90/180/270 degree rotation",
    "augment.flip": "probability of a horizontal or vertical flip",
    "augment.affine": "probability of a small affine (max 10 deg, 5% shift, 10% scale)",
    "augment.blur": "probability of a Gaussian blur",
    "augment.noise": "probability of Gaussian pixel noise",
    "augment.jpeg": "probability of JPEG re-compression damage (quality 20-60)",
    **transforms.help_lines(),
}


def _type_name(tp) -> str:
    base, optional = base_type(tp)
    name = getattr(base, "__name__", str(base))
    return name + (" or empty" if optional else "")


def settings_help() -> str:
    """Every setting by group: option, type, default and one line of meaning."""
    defaults = Config()
    table: list[tuple[str, ...]] = []
    for gname in ("experiment", "data", "logging", "paths", "wandb"):
        table.append((f"{gname}:",))
        for f in fields(GROUPS[gname]):
            name = f.name
            if name in SECRET_FIELDS:
                table.append((f"  {WANDB_ENV[name]}", "str", "(env/.env only)", HELP[name]))
                continue
            value = getattr(getattr(defaults, gname), name)
            rows = [(name, FIELD_TYPES[name], value)]
            if name in NESTED:
                rows = [(name, dict, None)] + [(f"{name}.{k}", NESTED_FIELDS[name][k], getattr(value, k))
                                               for k in NESTED_FIELDS[name]]
            for key, tp, default in rows:
                shown = "" if default is None else (",".join(default) if isinstance(default, list) else str(default))
                table.append((f"  --{key}", _type_name(tp), shown, HELP[key]))
    w = [max(len(r[i]) for r in table if len(r) > 1) for i in range(3)]
    return "\n".join(r[0] if len(r) == 1 else f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}"
                     for r in table)


