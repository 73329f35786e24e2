"""Checks that need timm's facts about a model: its name, and the one input size some architectures take.

ViT, DeiT, Swin, BEiT, LeViT, MaxViT and the like are built for one image size (their
position embeddings and attention windows are sized for it; the trainer does not ask timm
for ``dynamic_img_size``): at another ``img_size`` every batch fails. timm's pretrained
config says so (``fixed_input_size``, ``input_size``). The answers are cached per timm
version, as the model names are, so a check costs no torch import after the first.
"""
from __future__ import annotations

import difflib
import json
import os
from importlib.metadata import version
from pathlib import Path


def _cache_path(cache_dir: str | os.PathLike | None) -> Path:
    base = Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cvtrain"
    return base / f"timm-{version('timm')}-fixed-input-sizes.json"


def fixed_input_sizes(cache_dir: str | os.PathLike | None = None) -> dict[str, int]:
    """{timm model name: the image size it takes} for every model with a fixed input size."""
    path = _cache_path(cache_dir)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    # Deliberately lazy: timm imports torch; the cache above answers without it.
    import timm
    from timm.models import get_pretrained_cfg

    sizes = {}
    for name in timm.list_models():
        cfg = get_pretrained_cfg(name)
        if cfg is not None and cfg.fixed_input_size:
            sizes[name] = int(cfg.input_size[-1])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(sizes, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: the next check asks timm again, nothing worse
    return sizes


def fixed_size(model_name: str) -> int | None:
    """The only image size ``model_name`` takes, or None when it takes any (a pretrained tag is ignored)."""
    return fixed_input_sizes().get(model_name.split(".")[0])


def input_size_problem(model_name: str, img_size, model_from: str, size_from: str) -> str | None:
    """One line when ``model_name`` cannot run at ``img_size`` (an int, or a (min, max) range), else None."""
    fixed = fixed_size(model_name)
    if fixed is None:
        return None
    lo, hi = img_size if isinstance(img_size, tuple) else (img_size, img_size)
    if lo == hi == fixed:
        return None
    what = f"img_size={lo}" if lo == hi else f"img_size from {lo} to {hi}"
    return (f"model_name={model_name!r} ({model_from}) with {what} ({size_from}): {model_name} takes "
            f"{fixed}x{fixed} images only (a fixed input size in timm); use img_size={fixed}"
            f"{_variant_hint(model_name, fixed, lo if lo == hi else None)}")


def _variant_hint(model_name: str, fixed: int, size: int | None) -> str:
    base = model_name.split(".")[0]
    if size is None or str(fixed) not in base:
        return ""
    variant = base.replace(str(fixed), str(size))
    return f", or its {size}-px variant {variant}" if fixed_input_sizes().get(variant) == size else ""


def close_matches(name: str, candidates, n: int = 3) -> str:
    m = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(m)}?)" if m else ""


def timm_model_names(cache_dir: str | os.PathLike | None = None) -> set[str]:
    """timm's model names, from a cache file per timm version: checking a name then costs no torch import."""
    base = Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME")
                                                  or Path.home() / ".cache") / "cvtrain"
    path = base / f"timm-{version('timm')}-models.json"
    try:
        return set(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass
    # Deliberately lazy: timm imports torch; the cache above answers without it.
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


def check_model_name(name: str, source: str | None = None) -> list[str]:
    """[] for a timm model name (a pretrained tag after a dot is allowed), else one problem with close matches."""
    names = timm_model_names()
    if name.split(".")[0] in names:
        return []
    hint = close_matches(name, names, n=5)
    return [f"model_name={name!r} (from {source}): not a timm model{hint}; see timm.list_models()"]
