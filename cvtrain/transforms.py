"""The document transforms a run can turn on: each a probability and one strength, in one table.

The probabilities and strengths are fields of :class:`cvtrain.config.AugmentConfig`
(``--augment.rotate_any=0.5 --augment.rotate_any_max=180``); this table gives each strength its
unit, range and meaning, for validation and ``cvtrain --help``. It imports nothing heavy: the
configuration checks it before torch loads.
"""
from __future__ import annotations

from dataclasses import dataclass

PAD_FILL = 255  # documents are white: pad and fill with paper, not black bars


@dataclass(frozen=True)
class Transform:
    name: str          # the probability field (in [0, 1])
    strength: str      # the strength field
    lo: float          # the strength's allowed range; ``*_open``: that end excluded
    hi: float
    lo_open: bool
    hi_open: bool
    prob_help: str
    strength_help: str

    def range_text(self) -> str:
        return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"

    def allows(self, v: float) -> bool:
        above = v > self.lo if self.lo_open else v >= self.lo
        below = v < self.hi if self.hi_open else v <= self.hi
        return above and below


TRANSFORMS = (
    Transform("rotate_any", "rotate_any_max", 0, 180, True, False,
              "probability of a rotation by any angle (white fill; the page is scaled to fit, nothing cropped)",
              "degrees: the angle is uniform in [-max, max]; 180 turns pages any way"),
    Transform("brightness", "brightness_max", 0, 1, False, True,
              "probability of a brightness change",
              "the factor is uniform in [1 - max, 1 + max] (torchvision adjust_brightness)"),
    Transform("contrast", "contrast_max", 0, 1, False, True,
              "probability of a contrast change",
              "the factor is uniform in [1 - max, 1 + max] (torchvision adjust_contrast)"),
    Transform("gamma", "gamma_max", 0, 2, False, False,
              "probability of a gamma change",
              "gamma is log-uniform in [1 / (1 + max), 1 + max] (torchvision adjust_gamma)"),
    Transform("perspective", "perspective_max", 0, 1, False, True,
              "probability of a perspective warp (white fill)",
              "distortion: each corner moves inwards by up to max/2 of the side (RandomPerspective's distortion_scale)"),
    Transform("downscale", "downscale_min", 0, 1, True, False,
              "probability of resolution loss (resize down, then back up)",
              "the smallest resize factor: the factor is uniform in [min, 1]"),
    Transform("shadow", "shadow_max", 0, 1, False, False,
              "probability of a shadow: a smooth illumination gradient across the page",
              "the darkest edge loses a fraction uniform in [0, max] of its brightness; any direction"),
)
BY_NAME = {t.name: t for t in TRANSFORMS}


def help_lines() -> dict[str, str]:
    """``augment.<field>`` -> one line of meaning, for every probability and strength."""
    out = {}
    for t in TRANSFORMS:
        out[f"augment.{t.name}"] = t.prob_help
        out[f"augment.{t.strength}"] = f"{t.strength_help}; in {t.range_text()}"
    return out


def check(values: dict, source: str | None) -> list[str]:
    """Problems of an augment group's values (``dataclasses.asdict`` of AugmentConfig): every
    probability in [0, 1], every strength in its range."""
    strengths = {t.strength: t for t in TRANSFORMS}
    problems = []
    for k, v in values.items():
        t = strengths.get(k)
        if t is not None and not t.allows(v):
            problems.append(f"augment.{k}={v!r} (from {source}): must be in {t.range_text()} ({t.strength_help})")
        elif t is None and not (0 <= v <= 1):
            problems.append(f"augment.{k}={v!r} (from {source}): a probability, must be in [0, 1]")
    return problems
