"""The shift profile: how strongly the test set is damaged, as ``val_shift`` strengths.

A profile is a mapping from op names of :mod:`cvtrain.ops` to one strength each.
``cvsweep shift`` measures it; ``val_shift`` applies it to the validation images
(:mod:`cvtrain.valshift`). Pure Python (no torch), so settings are checked fast.

=========== ================= ========= ====================================================
key         meaning           range     per image (drawn from the image's own generator)
=========== ================= ========= ====================================================
rotate_any  share rotated     [0, 1]    with that probability, an angle uniform in [0, 360)
brightness  factor            [0.2, 5]  1 + (f - 1) * u, u uniform in [0.5, 1.5]; 1 = off
contrast    factor            [0.2, 5]  1 + (f - 1) * u, u uniform in [0.5, 1.5]; 1 = off
downscale   factor            (0, 1]    that factor (down, then back up); 1 = off
blur        sigma, px at 224  [0, 8]    sigma * u, u uniform in [0.5, 1.5], scaled by
                                        img_size / 224; 0 = off
noise       std, 0-255 levels [0, 64]   std * u, u uniform in [0.5, 1.5]; 0 = off
jpeg        quality           [5, 100]  that quality; 100 = off
=========== ================= ========= ====================================================

Keys left out are off. The ops run in the order of the table.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Mapping

import yaml

#: key -> (lowest, highest, off value, lowest is excluded)
RANGES: dict[str, tuple[float, float, float, bool]] = {
    "rotate_any": (0.0, 1.0, 0.0, False),
    "brightness": (0.2, 5.0, 1.0, False),
    "contrast": (0.2, 5.0, 1.0, False),
    "downscale": (0.0, 1.0, 1.0, True),
    "blur": (0.0, 8.0, 0.0, False),
    "noise": (0.0, 64.0, 0.0, False),
    "jpeg": (5.0, 100.0, 100.0, False),
}
KEYS = tuple(RANGES)
BLUR_REFERENCE_SIZE = 224  # blur sigmas are pixels of a 224-px image


class ShiftError(ValueError):
    """Data the shift measurement cannot read (``cvsweep shift``); the message names it and the fix."""


class ProfileError(ValueError):
    """A profile with an unknown key or a strength out of range; the message names it."""


def identity() -> dict[str, float]:
    return {k: r[2] for k, r in RANGES.items()}


def is_off(profile: Mapping[str, float]) -> bool:
    """True when no key changes an image (an empty profile included)."""
    return all(float(v) == RANGES[k][2] for k, v in profile.items())


def check_profile(profile: Any, source: str) -> dict[str, float]:
    """The profile as {key: float}; raises ProfileError naming every bad key or value at once."""
    if not isinstance(profile, Mapping):
        raise ProfileError(f"val_shift={profile!r} (from {source}): must be a mapping of strengths "
                           f"with keys {', '.join(KEYS)}, or a profile file (cvsweep shift -o FILE)")
    problems, out = [], {}
    for k, v in profile.items():
        if k not in RANGES:
            problems.append(f"val_shift.{k}: unknown key (from {source}); allowed: {', '.join(KEYS)}")
            continue
        lo, hi, _, open_lo = RANGES[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            problems.append(f"val_shift.{k}={v!r} (from {source}): must be a number")
            continue
        if not ((lo < v if open_lo else lo <= v) and v <= hi):
            problems.append(f"val_shift.{k}={v!r} (from {source}): must be in {'(' if open_lo else '['}{lo:g}, {hi:g}]")
            continue
        out[k] = float(v)
    if problems:
        raise ProfileError("; ".join(problems))
    return out


def load_profile(path: str | Path) -> dict[str, float]:
    """A profile file: YAML or JSON, the mapping itself or under a ``val_shift`` key."""
    p = Path(path)
    if not p.is_file():
        raise ProfileError(f"val_shift={str(p)!r}: no such profile file; write one with `cvsweep shift DATA_DIR -o {p}`")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"val_shift={str(p)!r}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(data, Mapping) and "val_shift" in data:
        data = data["val_shift"]
    return check_profile(data or {}, f"file {p}")


def parse_value(value: Any, source: str) -> dict[str, float]:
    """A ``val_shift`` setting: a mapping, its text (``"{'blur': 1.2}"``), or a profile file path."""
    if isinstance(value, str):
        text = value.strip()
        if not text or text.lower() in ("none", "null", "off"):
            return {}
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except ValueError:
                try:
                    value = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    raise ProfileError(f"val_shift={text!r} (from {source}): not a mapping; "
                                       "write it as {'blur': 1.2, 'rotate_any': 0.3}") from None
        else:
            return load_profile(text)
    if value is None:
        return {}
    return check_profile(value, source)


def dump(profile: Mapping[str, float]) -> str:
    """The profile as the YAML a ``val_shift`` setting reads."""
    return yaml.safe_dump({"val_shift": {k: round(float(profile[k]), 4) for k in KEYS if k in profile}},
                          sort_keys=False)
