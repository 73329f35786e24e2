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

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from .checks import close_matches
from .coerce import coerce, parse_literal
from .shift_profile import KEYS as VAL_SHIFT_KEYS
from .shift_profile import ProfileError, check_profile, parse_value
from .validation import safe_repr, validate_config

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


GROUPS: dict[str, type] = {
    "wandb": WandbConfig,
    "experiment": ExperimentConfig,
    "data": DataConfig,
    "logging": LoggingConfig,
    "paths": PathsConfig,
}
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


class ConfigError(ValueError):
    """One or more configuration problems; ``problems`` lists each message."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


#: Facts the trainer logs in a run's config beside its settings (engine's run extras). A W&B sweep
#: that requeues a preempted run may hand the run's whole config back as its parameters: these
#: are read back as what they are, facts, and ignored.
RUN_FACT_KEYS = frozenset({"env", "model", "class_names", "absent_classes", "n_train", "n_val", "split",
                           "data_config"})


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
        problems.append(f"{head}={safe_repr(head, value)} (from {source}): {exc}")


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


