"""Sweep file validation: the `sweeps` schema plus what our trainer needs. Every violation at once."""
from __future__ import annotations

import copy
import os
import re
import warnings
from pathlib import Path

import yaml

from cvtrain.checks import check_model_name, close_matches, input_size_problem
from cvtrain.config import (
    CANDIDATE,
    NESTED_FIELDS,
    PARAM_KEYS,
    VAL_SHIFT_KEYS,
    ConfigError,
    ExperimentConfig,
    mapping_layer,
    resolve,
)
from cvtrain.tracking import EPOCH_METRICS

_NUMBER_LIKE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
DISTRIBUTIONS = ("constant", "categorical", "categorical_w_probabilities", "int_uniform", "uniform", "q_uniform",
                 "log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values", "normal", "q_normal",
                 "log_normal", "q_log_normal", "beta", "q_beta", "log_uniform")
#: Distributions whose min and max are values of the setting itself (checked like listed values).
_RANGE_IS_VALUE = ("uniform", "int_uniform", "q_uniform", "log_uniform_values", "q_log_uniform_values",
                   "inv_log_uniform_values")
#: Settings naming a path: checked from where agents run (cvsweep create makes them absolute).
PATH_SETTINGS = ("data_dir", "pretrained_path", "pretrained_dir", "cache_dir")
_CONTINUOUS = ("uniform", "log_uniform_values", "log_uniform", "inv_log_uniform_values", "normal", "log_normal",
               "beta", "q_normal", "q_log_normal", "q_log_uniform_values", "q_beta")


class SweepFileError(ValueError):
    def __init__(self, violations: list[str]):
        self.violations = violations
        super().__init__("\n".join(violations))


def import_sweeps():
    with warnings.catch_warnings():
        # `sweeps` still uses pydantic v1-style config; the warning is theirs, not the user's.
        warnings.filterwarnings("ignore", message=r"(?s).*(class-based `config`|Valid config keys have changed)")
        import sweeps  # lazy: W&B's engine (pydantic) loads inside the warnings filter above
    return sweeps


def load_sweep_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SweepFileError(["no such file"])
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SweepFileError([f"not valid YAML: {' '.join(str(exc).split())}"]) from None
    if not isinstance(data, dict):
        raise SweepFileError(["a sweep file is a mapping with method, metric and parameters"])
    return data


def validate_sweep_config(cfg: dict) -> list[str]:
    """Every violation in ``cfg``, as one readable line each."""
    sweeps = import_sweeps()
    out = [f"schema: {v}" for v in sweeps.schema_violations_from_proposed_config(cfg)]
    method = cfg.get("method")
    params = cfg.get("parameters")
    metric = cfg.get("metric") or {}
    if not isinstance(params, dict) or not params:
        out.append("parameters: a sweep needs at least one parameter")
        params = {}
    if method in ("bayes",) or cfg.get("early_terminate"):
        if not metric.get("name"):
            out.append(f"metric: method {method!r}{' with early_terminate' if cfg.get('early_terminate') else ''} "
                       "needs metric.name and metric.goal")
    if metric.get("name") and metric["name"] not in EPOCH_METRICS:
        out.append(f"metric.name: {metric['name']!r} is never logged by the trainer{close_matches(metric['name'], EPOCH_METRICS)}; "
                   f"logged per epoch: {', '.join(EPOCH_METRICS)}")
    if str(metric.get("name", "")).startswith(("val_shift", "best_val_shift")) and "val_shift" not in params:
        out.append(f"metric.name: {metric['name']!r} is logged only with val_shift on; add a val_shift parameter "
                   "(a profile from `cvsweep shift DATA_DIR -o shift.yaml`, or a dict of strengths)")
    if method == "bayes" and params and all(_is_constant(p) for p in params.values() if isinstance(p, dict)):
        out.append("parameters: bayes needs at least one parameter that varies")
    for name, spec in params.items():
        out += _check_param(name, spec, method, PARAM_KEYS + [CANDIDATE], top=True)
    return out + trainer_checks(params)


def _is_constant(spec: dict) -> bool:
    return "value" in spec or (isinstance(spec.get("values"), list) and len(spec["values"]) == 1)


def _check_param(name: str, spec, method, known, top: bool, prefix: str = "") -> list[str]:
    full = prefix + name
    out = []
    if name not in known:
        out.append(f"parameters.{full}: the trainer has no setting {name!r}{close_matches(name, known)}")
    if not isinstance(spec, dict):
        return out + [f"parameters.{full}: must be a mapping such as {{values: [...]}} or {{min: .., max: ..}}"]
    if "parameters" in spec:
        sub_known = list(NESTED_FIELDS.get(name, {})) or (list(VAL_SHIFT_KEYS) if name == "val_shift" else [])
        if top and name in known and not sub_known:
            out.append(f"parameters.{full}: {name!r} takes a single value, not nested parameters")
        for k, v in (spec["parameters"] or {}).items():
            out += _check_param(k, v, method, sub_known or [k], top=False, prefix=full + ".")
        return out
    for key in ("min", "max", "mu", "sigma", "q", "value"):
        if isinstance(spec.get(key), str) and _NUMBER_LIKE.match(spec[key].strip()):
            out.append(f"parameters.{full}.{key}: {spec[key]!r} is a string (YAML reads 1e-4 as text); "
                       f"write it as {float(spec[key])!r}")
    for v in spec.get("values") or []:
        if isinstance(v, str) and _NUMBER_LIKE.match(v.strip()):
            out.append(f"parameters.{full}.values: {v!r} is a string (YAML reads 1e-4 as text); write {float(v)!r}")
    if method == "bayes" and "probabilities" in spec:
        out.append(f"parameters.{full}.probabilities: bayes cannot use categorical probabilities "
                   "(the search fails once runs exist); drop them or use method random")
    dist = spec.get("distribution")
    if dist is not None and dist not in DISTRIBUTIONS:
        out.append(f"parameters.{full}.distribution: {dist!r} is not a distribution{close_matches(str(dist), DISTRIBUTIONS)}; "
                   f"allowed: {', '.join(DISTRIBUTIONS[:-1])}")
    is_continuous = dist in _CONTINUOUS or (dist is None and "values" not in spec and "value" not in spec
                                            and any(isinstance(spec.get(k), float) for k in ("min", "max")))
    if method == "grid" and is_continuous:
        out.append(f"parameters.{full}: grid needs discrete values (values: [...], int_uniform or q_uniform), "
                   f"not a continuous {dist or 'uniform'} distribution")
    return out


def check_sweep_file(path: str | Path) -> dict:
    """Load and validate; raises SweepFileError listing every violation."""
    cfg = load_sweep_file(path)
    problems = validate_sweep_config(cfg)
    if problems:
        raise SweepFileError(problems)
    return cfg


def _values(params: dict, prefix: str = ""):
    """(path, [(label, value), ...], fixed?) for every parameter the trainer will see."""
    for name, spec in params.items():
        if not isinstance(spec, dict):
            continue
        path = prefix + name
        if isinstance(spec.get("parameters"), dict):
            yield from _values(spec["parameters"], path + ".")
        elif "value" in spec:
            yield path, [("value", spec["value"])], True
        elif isinstance(spec.get("values"), list) and spec["values"]:
            yield path, [(f"values[{i}]", v) for i, v in enumerate(spec["values"])], False
        elif spec.get("distribution", "uniform") in _RANGE_IS_VALUE:
            rng = [(k, spec[k]) for k in ("min", "max") if isinstance(spec.get(k), (int, float))]
            if rng:
                yield path, rng, False


def _problems(layer: dict) -> list[str]:
    try:
        resolve(mapping_layer(layer, "sweep"))
        return []
    except ConfigError as exc:
        return exc.problems


def trainer_checks(params: dict) -> list[str]:
    """Every fixed value, every listed value and both ends of every range through the trainer's own
    checks (types, choices, ranges, model names): a sweep that validates can run."""
    entries = list(_values(params))
    base = {path: vals[0][1] for path, vals, _ in entries}
    base_problems = _problems(base)
    out = []
    for p in base_problems:
        named = [path for path in base if p.startswith(f"{path}=")]
        out.append(f"parameters.{named[0]}: {p}" if named else f"parameters: {p}")
    for path, vals, fixed in entries:
        for label, value in vals[1:] if not fixed else []:
            for p in _problems({**base, path: value}):
                if p not in base_problems:
                    out.append(f"parameters.{path}.{label}={value!r}: {p}")
        if path == "model_name":
            for label, value in vals:
                if isinstance(value, str):
                    where = f"parameters.{path}" + ("" if fixed else f".{label}")
                    out += [f"{where}: {p}" for p in check_model_name(value, "sweep")]
    return list(dict.fromkeys(out + input_size_checks(entries)))


def input_size_checks(entries: list) -> list[str]:
    """Every model x img_size pair the sweep can draw (every grid point, every pair of listed values; a
    range of sizes as a whole) through the model's input-size check: some models take one size only."""
    found = {path: (vals, fixed) for path, vals, fixed in entries}
    default = ExperimentConfig()
    models, _ = found.get("model_name", ([("default", default.model_name)], True))
    sizes, sizes_fixed = found.get("img_size", ([("default", default.img_size)], True))
    labels = [label for label, _ in sizes]
    if labels == ["min", "max"] or labels in (["min"], ["max"]):
        sizes = [(f"{labels[0]}..{labels[-1]}", (sizes[0][1], sizes[-1][1]))]  # a range: every size in it
    out = []
    for m_label, model in models:
        if not isinstance(model, str) or check_model_name(model):
            continue
        for s_label, size in sizes:
            if isinstance(size, bool) or not isinstance(size, (int, float, tuple)):
                continue
            size = tuple(int(v) for v in size) if isinstance(size, tuple) else int(size)
            p = input_size_problem(model, size, f"parameters.model_name.{m_label}",
                                   f"parameters.img_size.{s_label}")
            if p:
                out.append(f"parameters: {p}")
    return out


def path_problems(params: dict) -> list[str]:
    """Path settings (data_dir, pretrained_path, pretrained_dir, cache_dir) that do not exist from here."""
    out = []
    for path, vals, _ in _values(params):
        if path in PATH_SETTINGS and path != "cache_dir":
            for _, value in vals:
                if isinstance(value, str) and value and not Path(value).exists():
                    out.append(f"parameters.{path}: {value!r} does not exist from {Path.cwd()}: agents started here "
                               "would fail every trial; fix the path")
    return out


def absolute_paths(cfg: dict) -> tuple[dict, list[str]]:
    """A copy of ``cfg`` whose relative path settings that exist here are absolute, and what changed.

    Agents may start from another directory: a relative data_dir would then name nothing.
    """

    out = copy.deepcopy(cfg)
    changes = []
    for name in PATH_SETTINGS:
        spec = (out.get("parameters") or {}).get(name)
        if not isinstance(spec, dict):
            continue
        key = "value" if "value" in spec else "values" if isinstance(spec.get("values"), list) else None
        if key is None:
            continue
        vals = [spec[key]] if key == "value" else spec[key]
        new = [os.path.abspath(v) if isinstance(v, str) and v and not Path(v).is_absolute() and Path(v).exists()
               else v for v in vals]
        for a, b in zip(vals, new):
            if a != b:
                changes.append(f"{name}: {a} -> {b}")
        spec[key] = new[0] if key == "value" else new
    return out, changes
