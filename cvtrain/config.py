"""Typed trainer configuration, resolved once.

Resolution order, lowest first::

    defaults  <  .env and environment  <  --config FILE.yaml  <  sweep parameters  <  command line

Every field lives in exactly one group, and field names are unique across
groups, so the flat namespace (``learning_rate``, ``data_dir``, ``mixup``) is
what the command line, sweep YAML, env files and the W&B run config all speak.
Nested groups (``mixup``, ``augment``) take a dict (``--mixup={'alpha': 0.2}``)
or dotted keys (``--mixup.alpha=0.2``).

The W&B API key is a field of :class:`WandbConfig` but never leaves it: it is
excluded from :meth:`Config.to_flat_dict`, from ``repr`` and from every file.
The key and the server address (``base_url``) say how to reach W&B, not how to
train: neither is logged with the run nor settable by a sweep.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from . import transforms, weights
from .checks import input_size_problem
from .shift_profile import KEYS as VAL_SHIFT_KEYS
from .shift_profile import ProfileError, check_profile, parse_value

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "nadam", "radam", "rmsprop", "lamb", "lion")
SCHEDULERS = ("cosine", "step", "multistep", "plateau", "poly", "tanh", "none")
WANDB_MODES = ("online", "offline", "disabled")
AMP_DTYPES = ("bf16", "fp16")
RESIZE_MODES = ("pad", "stretch")
KEEP_CHECKPOINTS = ("best", "last", "all", "none")
DEVICES = ("auto", "cpu", "cuda")
AUGMENT_ON = ("device", "cpu")

#: Environment variables read for W&B settings, by field.
WANDB_ENV = {
    "api_key": "WANDB_API_KEY",
    "base_url": "WANDB_BASE_URL",
    "project": "WANDB_PROJECT",
    "entity": "WANDB_ENTITY",
    "mode": "WANDB_MODE",
    "tags": "WANDB_TAGS",
    "group": "WANDB_RUN_GROUP",
}
#: Every other field reads ``CVTRAIN_<FIELD>`` (e.g. ``CVTRAIN_LEARNING_RATE``).
ENV_PREFIX = "CVTRAIN_"


# ---------------------------------------------------------------------------
# The groups. Every default sits here.
# ---------------------------------------------------------------------------
@dataclass
class WandbConfig:
    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None   # None: wandb's own (settings files, else https://api.wandb.ai)
    project: str = "cvsweep"
    entity: str | None = None
    mode: str | None = None  # None: online when wandb finds credentials (env, .env, netrc, settings), else offline
    tags: list = field(default_factory=list)
    group: str | None = None
    job_type: str = "train"
    run_name: str | None = None   # None: made from the config by create_run_name
    run_id: str | None = None     # set to continue an existing W&B run on --resume
    parent_sweep: str | None = None  # finalize runs: the sweep their configuration comes from
    log_artifacts: bool = True
    save_requirements: bool = True  # W&B's pip-package list per run (~0.15 s; sweep workers turn it off)


@dataclass
class MixupConfig:
    alpha: float = 0.0          # mixup alpha; 0 disables mixup
    cutmix_alpha: float = 0.0   # cutmix alpha; 0 disables cutmix
    prob: float = 1.0           # probability of applying mixup or cutmix per batch
    switch_prob: float = 0.5    # probability of cutmix instead of mixup when both are on


@dataclass
class AugmentConfig:
    """Probabilities in [0, 1] (and strengths) matching the documents' test set damage."""
    rotate: float = 0.5     # probability of a 90/180/270 degree rotation
    flip: float = 0.3       # probability of a horizontal or vertical flip
    affine: float = 0.3     # probability of a small affine (max 10 deg, 5% shift, 10% scale)
    blur: float = 0.1       # probability of a Gaussian blur
    noise: float = 0.1      # probability of Gaussian pixel noise
    jpeg: float = 0.1       # probability of JPEG re-compression damage (quality 20-60)
    # The document transforms: a probability (off by default) and a strength each; units and
    # ranges in cvtrain/transforms.py.
    rotate_any: float = 0.0
    rotate_any_max: float = 180.0   # degrees
    brightness: float = 0.0
    brightness_max: float = 0.3
    contrast: float = 0.0
    contrast_max: float = 0.3
    gamma: float = 0.0
    gamma_max: float = 0.5
    perspective: float = 0.0
    perspective_max: float = 0.3
    downscale: float = 0.0
    downscale_min: float = 0.5
    shadow: float = 0.0
    shadow_max: float = 0.5


@dataclass
class ExperimentConfig:
    model_name: str = "resnet34"
    pretrained: bool = False
    pretrained_path: str | None = None
    pretrained_dir: str | None = None   # a folder of weight files named after the timm model (cvtrain/weights.py)
    num_classes: int | None = None      # None: inferred from meta.csv or the data
    img_size: int = 224
    batch_size: int = 32
    learning_rate: float = 1e-3
    epochs: int = 50
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    momentum: float = 0.9
    scheduler: str = "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    min_lr: float = 1e-6
    label_smoothing: float = 0.0
    drop_rate: float = 0.0
    grad_clip: float | None = None
    mixup: MixupConfig = field(default_factory=MixupConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tta: list = field(default_factory=lambda: ["none", "rot90", "rot180", "rot270"])
    val_shift: dict = field(default_factory=dict)   # test-like strengths (cvtrain.shift_profile); {}: off
    val_shift_seed: int = 0
    seed: int = 42
    device: str = "auto"
    amp: bool | None = None     # None: on where the device supports it (CUDA)
    amp_dtype: str = "bf16"
    channels_last: bool = True


@dataclass
class DataConfig:
    data_dir: str = "data"
    train_csv: str = "train.csv"
    meta_csv: str = "meta.csv"
    image_dir: str = "train"
    val_fraction: float = 0.2
    stratify: bool = True
    folds: int = 0           # >1: k-fold; `fold` selects the validation fold
    fold: int = 0
    split_seed: int | None = None  # seed of the split/folds; None: the run's seed
    holdout: float = 0.0     # a stratified slice no training or validation sees (cvsweep create --holdout)
    holdout_seed: int = 0
    test_dir: str = "test"   # test images (predict, save_predictions)
    sample_submission: str = "sample_submission.csv"  # test IDs in submission order
    resize: str = "pad"      # pad keeps the aspect ratio; stretch does not
    num_workers: int = 2
    augment_on: str = "device"     # device: batched on the training device; cpu: per sample in the loader
    cache_dir: str | None = None   # None: $XDG_CACHE_HOME/cvtrain or ~/.cache/cvtrain
    skip_bad_images: bool = False


@dataclass
class LoggingConfig:
    log_interval: int = 20          # batches between batch-loss logs
    system_interval: float = 10.0   # seconds between system-metric samples
    progress: bool = True


@dataclass
class PathsConfig:
    output_root: str = "outputs"
    output_dir: str | None = None      # None: <output_root>/<run name>
    checkpoint_dir: str | None = None  # None: <output_dir>/checkpoints
    save_last: bool = True
    keep_checkpoints: str = "best"     # what an ended run keeps: best | last | all | none (cvtrain.checkpoint)
    save_predictions: bool = False     # write the final epoch's val and test probabilities (finalize)


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
    "save_predictions": "at the end, write the final epoch's softmax on the validation images (val_predictions.csv) "
                        "and on the test set with the tta views (test_predictions.csv); cvsweep finalize sets it",
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


GROUPS: dict[str, type] = {
    "wandb": WandbConfig,
    "experiment": ExperimentConfig,
    "data": DataConfig,
    "logging": LoggingConfig,
    "paths": PathsConfig,
}
SECRET_FIELDS = frozenset({"api_key"})
#: How to reach W&B: never in the logged config, never set by a sweep.
CONNECTION_FIELDS = frozenset({"api_key", "base_url"})
#: A sweep parameter holding a whole configuration (a mapping of settings), applied in its
#: layer's place: a finalize sweep is a grid over (candidate, fold).
CANDIDATE = "candidate"
NESTED = {"mixup": MixupConfig, "augment": AugmentConfig}


@dataclass
class Config:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    #: where each field's value came from ("default", "env WANDB_MODE", "file x.yaml", "sweep", "cli")
    sources: dict = field(default_factory=dict, repr=False, compare=False)

    def to_flat_dict(self) -> dict:
        """The flat, secret-free view logged to W&B and saved beside checkpoints."""
        out = {}
        for gname in GROUPS:
            group = getattr(self, gname)
            for f in fields(group):
                if f.name in CONNECTION_FIELDS:
                    continue
                value = getattr(group, f.name)
                out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else _plain(value)
        return out

    def get(self, name: str) -> Any:
        return getattr(getattr(self, FIELD_GROUP[name]), name)


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


FIELD_GROUP: dict[str, str] = {}
FIELD_TYPES: dict[str, Any] = {}
for _gname, _cls in GROUPS.items():
    _hints = typing.get_type_hints(_cls)
    for _f in fields(_cls):
        assert _f.name not in FIELD_GROUP, f"duplicate config field {_f.name}"
        FIELD_GROUP[_f.name] = _gname
        FIELD_TYPES[_f.name] = _hints[_f.name]
NESTED_FIELDS = {n: {f.name: typing.get_type_hints(c)[f.name] for f in fields(c)} for n, c in NESTED.items()}
KNOWN_KEYS = sorted(FIELD_GROUP)
#: Keys a sweep or a config file may set (every field but how to reach W&B).
PARAM_KEYS = sorted(k for k in FIELD_GROUP if k not in CONNECTION_FIELDS)


def known_param_paths() -> list[str]:
    """Every settable key, with nested ones dotted (``mixup.alpha``)."""
    out = list(PARAM_KEYS) + [CANDIDATE]
    for n, sub in NESTED_FIELDS.items():
        out += [f"{n}.{k}" for k in sub]
    out += [f"val_shift.{k}" for k in VAL_SHIFT_KEYS]
    return sorted(out)


def _type_name(tp) -> str:
    base, optional = _base_type(tp)
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


def timm_model_names(cache_dir: str | os.PathLike | None = None) -> set[str]:
    """timm's model names, from a cache file per timm version: checking a name then costs no torch import."""
    import json
    from importlib.metadata import version

    base = Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME")
                                                  or Path.home() / ".cache") / "cvtrain"
    path = base / f"timm-{version('timm')}-models.json"
    try:
        return set(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass
    import timm

    names = sorted(timm.list_models())
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(names))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: the next check imports timm again, nothing worse
    return set(names)


class ConfigError(ValueError):
    """One or more configuration problems; ``problems`` lists each message."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


def close_matches(name: str, candidates, n: int = 3) -> str:
    m = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(m)}?)" if m else ""


# ---------------------------------------------------------------------------
# Value coercion: strings from env/CLI become typed values.
# ---------------------------------------------------------------------------
def parse_literal(text: str) -> Any:
    """Parse a value the way ``wandb agent`` writes it: Python repr, True/False, None."""
    s = text.strip()
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _base_type(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp, type(None) in typing.get_args(tp)
    return tp, False


def coerce(name: str, value: Any, tp) -> Any:
    """Coerce ``value`` to type ``tp``; raise ValueError with a readable reason."""
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ValueError("must not be empty")
    if isinstance(value, str) and base is not str:
        value = parse_literal(value)
        if value is None and optional:
            return None
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        raise ValueError("must be True or False")
    if base is int:
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if hasattr(value, "item"):  # numpy scalar from a sweep suggestion
            return coerce(name, value.item(), tp)
        raise ValueError("must be an integer")
    if base is float:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "item"):
            return float(value.item())
        raise ValueError("must be a number" + (" (write 1.0e-4, not 1e-4, in YAML)" if isinstance(value, str) else ""))
    if base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError("must be a string")
    if base is list:
        if isinstance(value, (list, tuple)):
            return [v.item() if hasattr(v, "item") else v for v in value]
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        raise ValueError("must be a list")
    return value


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------
def env_layer(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Values from an environment mapping (os.environ merged over .env)."""
    out = {}
    for name in KNOWN_KEYS:
        var = WANDB_ENV.get(name, ENV_PREFIX + name.upper())
        if var in environ and environ[var] != "":
            out[name] = (environ[var], f"env {var}")
    return out


def read_env_file(path: str | os.PathLike | None = ".env") -> dict[str, str]:
    """Read a dotenv file without touching os.environ."""
    if path is None or not Path(path).is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def merged_env(environ: Mapping[str, str], env_file: str | os.PathLike | None = ".env") -> dict[str, str]:
    """The settings the tools read: the environment over the .env file (os.environ untouched)."""
    return {**read_env_file(env_file), **environ}


def file_layer(path: str | os.PathLike) -> dict[str, tuple[Any, str]]:
    """Values from a YAML config file: flat keys, or grouped under the group names."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"--config: file {str(p)!r} does not exist"])
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"--config: {p} is not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"--config: {p} must hold a mapping of settings, got {type(data).__name__}"])
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if k in GROUPS and isinstance(v, dict):
            flat.update(v)
        else:
            flat[k] = v
    return {k: (v, f"file {p}") for k, v in flat.items()}


#: Facts the trainer logs in a run's config beside its settings (engine's run extras). A W&B sweep
#: that requeues a preempted run may hand the run's whole config back as its parameters: these
#: are read back as what they are, facts, and ignored.
RUN_FACT_KEYS = frozenset({"env", "model", "class_names", "absent_classes", "n_train", "n_val", "split",
                           "data_config"})


def sweep_layer(param_path: str | os.PathLike | None) -> dict[str, tuple[Any, str]]:
    """Sweep parameters from the YAML file ``wandb agent`` writes ({name: {value: v}})."""
    if not param_path or not Path(param_path).is_file():
        return {}
    data = yaml.safe_load(Path(param_path).read_text()) or {}
    out = {}
    for k, v in data.items():
        if k.startswith("_") or k == "wandb_version" or k in RUN_FACT_KEYS:
            continue
        out[k] = (v["value"] if isinstance(v, dict) and "value" in v else v, "sweep")
    return out


def mapping_layer(values: Mapping[str, Any], source: str) -> dict[str, tuple[Any, str]]:
    return {k: (v, source) for k, v in values.items()}


def resolve(*layers: dict[str, tuple[Any, str]], check_model: bool = False) -> Config:
    """Apply layers in order (later wins) over the defaults; collect every problem.

    ``check_model`` also checks model_name against timm's registry (imports timm).
    """
    cfg = Config()
    cfg.sources = {k: "default" for k in KNOWN_KEYS}
    problems: list[str] = []
    for layer in layers:
        # A candidate is a whole configuration: the layer's other keys (fold, say) win over it.
        for key, (value, source) in sorted(layer.items(), key=lambda kv: kv[0] != CANDIDATE):
            _apply(cfg, key, value, source, problems)
    problems += validate_config(cfg, check_model=check_model)
    if problems:
        raise ConfigError(problems)
    return cfg


def _apply(cfg: Config, key: str, value: Any, source: str, problems: list[str]) -> None:
    if key in RUN_FACT_KEYS:
        return  # a saved config.yaml also records facts (the split used): read back, they set nothing
    if key == CANDIDATE:
        if isinstance(value, str):
            value = parse_literal(value)
        if not isinstance(value, dict):
            problems.append(f"{CANDIDATE}={value!r} (from {source}): must be a mapping of settings")
            return
        for k, v in value.items():
            _apply(cfg, k, v, f"{source} {CANDIDATE}", problems)
        return
    head, _, sub = key.partition(".")
    if head in GROUPS and sub and "." not in sub:
        head, sub = sub, ""  # "experiment.learning_rate" -> "learning_rate"
    if head not in FIELD_GROUP:
        problems.append(f"{key}: unknown setting (from {source}){close_matches(head, known_param_paths())}")
        return
    if head in CONNECTION_FIELDS and source.startswith("sweep"):
        problems.append(f"{key}: cannot be set by a sweep")
        return
    if head == "val_shift":
        _apply_val_shift(cfg, sub, value, source, problems)
        return
    group = getattr(cfg, FIELD_GROUP[head])
    if head in NESTED:
        current = getattr(group, head)
        if sub:
            updates = {sub: value}
        else:
            if isinstance(value, str):
                value = parse_literal(value)
            if not isinstance(value, dict):
                problems.append(f"{key}={value!r} (from {source}): must be a mapping with keys {sorted(NESTED_FIELDS[head])}")
                return
            updates = value
        new = dataclasses.replace(current)
        for k, v in updates.items():
            if k not in NESTED_FIELDS[head]:
                problems.append(f"{head}.{k}: unknown setting (from {source}){close_matches(str(k), NESTED_FIELDS[head])}; "
                                f"allowed: {', '.join(sorted(NESTED_FIELDS[head]))}")
                continue
            try:
                setattr(new, k, coerce(f"{head}.{k}", v, NESTED_FIELDS[head][k]))
            except ValueError as exc:
                problems.append(f"{head}.{k}={v!r} (from {source}): {exc}")
        setattr(group, head, new)
        cfg.sources[head] = source
        return
    if sub:
        problems.append(f"{key}: {head} has no sub-settings (from {source})")
        return
    try:
        setattr(group, head, coerce(head, value, FIELD_TYPES[head]))
        cfg.sources[head] = source
    except ValueError as exc:
        problems.append(f"{head}={_safe_repr(head, value)} (from {source}): {exc}")


def _apply_val_shift(cfg: Config, sub: str, value: Any, source: str, problems: list[str]) -> None:
    """A whole profile (file path, mapping or its text), or one strength by dotted key over the current one."""
    try:
        if sub:
            value = parse_literal(value) if isinstance(value, str) else value
            new = {**cfg.experiment.val_shift, **check_profile({sub: value}, source)}
        else:
            new = parse_value(value, source)
    except ProfileError as exc:
        problems.append(str(exc))
        return
    cfg.experiment.val_shift = new
    cfg.sources["val_shift"] = source


def _safe_repr(name: str, value: Any) -> str:
    return "<hidden>" if name in SECRET_FIELDS else repr(value)


# ---------------------------------------------------------------------------
# Validation: every problem at once, each naming field, value, source, allowed.
# ---------------------------------------------------------------------------
def validate_config(cfg: Config, check_model: bool = True) -> list[str]:
    problems: list[str] = []

    def bad(name: str, allowed: str, value: Any = None) -> None:
        v = cfg.get(name) if value is None else value
        problems.append(f"{name}={_safe_repr(name, v)} (from {cfg.sources.get(name, 'default')}): {allowed}")

    e, d, w, lg = cfg.experiment, cfg.data, cfg.wandb, cfg.logging
    if w.mode is not None and w.mode not in WANDB_MODES:
        bad("mode", f"allowed: {', '.join(WANDB_MODES)}")
    if e.optimizer.lower() not in OPTIMIZERS:
        bad("optimizer", f"allowed: {', '.join(OPTIMIZERS)}{close_matches(e.optimizer, OPTIMIZERS)}")
    if e.scheduler.lower() not in SCHEDULERS:
        bad("scheduler", f"allowed: {', '.join(SCHEDULERS)}{close_matches(e.scheduler, SCHEDULERS)}")
    if e.amp_dtype not in AMP_DTYPES:
        bad("amp_dtype", f"allowed: {', '.join(AMP_DTYPES)}")
    if e.device not in DEVICES and not e.device.startswith("cuda:"):
        bad("device", f"allowed: {', '.join(DEVICES)} or cuda:N")
    if d.resize not in RESIZE_MODES:
        bad("resize", f"allowed: {', '.join(RESIZE_MODES)}")
    if cfg.paths.keep_checkpoints not in KEEP_CHECKPOINTS:
        bad("keep_checkpoints", f"allowed: {', '.join(KEEP_CHECKPOINTS)}{close_matches(cfg.paths.keep_checkpoints, KEEP_CHECKPOINTS)}")
    if d.augment_on not in AUGMENT_ON:
        bad("augment_on", f"allowed: {', '.join(AUGMENT_ON)}{close_matches(d.augment_on, AUGMENT_ON)}")
    for name, lo in (("img_size", 16), ("batch_size", 1), ("epochs", 1), ("log_interval", 1)):
        if cfg.get(name) < lo:
            bad(name, f"must be >= {lo}")
    if e.num_classes is not None and e.num_classes < 2:
        bad("num_classes", "must be >= 2 (or empty to infer from the data)")
    if not (0 < e.learning_rate < 10):
        bad("learning_rate", "must be > 0 and < 10")
    for name in ("weight_decay", "warmup_lr", "min_lr", "drop_rate"):
        if cfg.get(name) < 0:
            bad(name, "must be >= 0")
    if e.warmup_epochs < 0 or (e.epochs >= 1 and e.warmup_epochs >= e.epochs):
        bad("warmup_epochs", f"must be >= 0 and < epochs ({e.epochs})")
    if not (0 <= e.label_smoothing < 1):
        bad("label_smoothing", "must be in [0, 1)")
    if e.grad_clip is not None and e.grad_clip <= 0:
        bad("grad_clip", "must be > 0 or empty")
    problems += transforms.check(dataclasses.asdict(e.augment), cfg.sources.get("augment"))
    m = e.mixup
    if m.alpha < 0 or m.cutmix_alpha < 0:
        problems.append(f"mixup={dataclasses.asdict(m)} (from {cfg.sources.get('mixup')}): alphas must be >= 0")
    if not (0 <= m.prob <= 1 and 0 <= m.switch_prob <= 1):
        problems.append(f"mixup={dataclasses.asdict(m)} (from {cfg.sources.get('mixup')}): prob and switch_prob must be in [0, 1]")
    if (m.alpha > 0 or m.cutmix_alpha > 0) and e.batch_size % 2:
        bad("batch_size", f"must be even with mixup/cutmix (mixup={dataclasses.asdict(m)} from "
                          f"{cfg.sources.get('mixup')} pairs each image with another of its batch); "
                          f"use {e.batch_size + 1}" + (f" or {e.batch_size - 1}" if e.batch_size > 1 else ""))
    from .tta import TTA_VIEWS

    for v in e.tta:
        if v not in TTA_VIEWS:
            bad("tta", f"unknown view {v!r}; allowed: {', '.join(TTA_VIEWS)}")
    if not (0 < d.val_fraction < 1) and d.folds <= 1:
        bad("val_fraction", "must be in (0, 1)")
    if not (0 <= d.holdout < 0.5):
        bad("holdout", "must be in [0, 0.5)")
    if d.folds == 1 or d.folds < 0:
        bad("folds", "must be 0 (plain split) or >= 2")
    if d.folds >= 2 and not (0 <= d.fold < d.folds):
        bad("fold", f"must be in [0, {d.folds - 1}] for folds={d.folds}")
    if d.num_workers < 0:
        bad("num_workers", "must be >= 0")
    if lg.system_interval <= 0:
        bad("system_interval", "must be > 0 seconds")
    if e.pretrained_path and not Path(e.pretrained_path).is_file():
        bad("pretrained_path", "file does not exist")
    if e.pretrained_dir and e.pretrained_path:
        bad("pretrained_dir", "pretrained_path is set too: give one file or one folder")
    elif e.pretrained_dir and not Path(e.pretrained_dir).is_dir():
        bad("pretrained_dir", "folder does not exist")
    elif e.pretrained and e.pretrained_dir:
        problems += weights.problems(e.pretrained_dir, e.model_name, cfg.sources.get("pretrained_dir"))
    if check_model:
        problems += validate_model_name(cfg)
    return problems


def validate_model_name(cfg: Config) -> list[str]:
    """A timm model name, and an img_size the model can take (some take one size only)."""
    e = cfg.experiment
    problems = check_model_name(e.model_name, cfg.sources.get("model_name"))
    size = None if problems else input_size_problem(e.model_name, e.img_size, f"from {cfg.sources.get('model_name')}",
                                                    f"from {cfg.sources.get('img_size')}")
    return problems + ([size] if size else [])


def check_model_name(name: str, source: str | None = None) -> list[str]:
    """[] for a timm model name (a pretrained tag after a dot is allowed), else one problem with close matches."""
    names = timm_model_names()
    if name.split(".")[0] in names:
        return []
    hint = close_matches(name, names, n=5)
    return [f"model_name={name!r} (from {source}): not a timm model{hint}; see timm.list_models()"]
