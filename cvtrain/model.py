"""Model creation (timm) and model metrics."""
from __future__ import annotations

import logging

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import weights
from .config import ExperimentConfig

log = logging.getLogger(__name__)


class PretrainedWeightsError(RuntimeError):
    pass


def build_model(exp: ExperimentConfig, num_classes: int) -> nn.Module:
    """``timm.create_model``; pretrained weights from ``pretrained_dir`` or ``pretrained_path`` when
    given (offline), else the hub (or a pre-filled Hugging Face cache, as timm reads it)."""
    kwargs = dict(num_classes=num_classes, drop_rate=exp.drop_rate)
    if not exp.pretrained:
        return timm.create_model(exp.model_name, pretrained=False, **kwargs)
    if exp.pretrained_dir and not exp.pretrained_path:
        model = timm.create_model(exp.model_name, pretrained=False, **kwargs)
        try:
            path = weights.find(exp.pretrained_dir, exp.model_name)
            weights.load_into(model, path)
        except weights.WeightsError as exc:
            raise PretrainedWeightsError(str(exc)) from None
        log.info("pretrained weights for %s from %s", exp.model_name, path)
        return model
    if exp.pretrained_path:
        # timm adapts the classifier to num_classes when the file's head differs.
        return timm.create_model(exp.model_name, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=exp.pretrained_path), **kwargs)
    try:
        return timm.create_model(exp.model_name, pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub/network failures come in many types
        raise PretrainedWeightsError(
            f"pretrained=True but the weights for {exp.model_name!r} could not be fetched "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}).\n"
            "With no network, fetch them on a machine that has one:\n"
            f"  python -c \"import timm, torch; m = timm.create_model('{exp.model_name}', pretrained=True); "
            f"torch.save(m.state_dict(), '{exp.model_name}.pth')\"\n"
            f"copy the file here and pass --pretrained_path={exp.model_name}.pth, or put one such file per model "
            "in a folder and pass --pretrained_dir=FOLDER, or copy the Hugging Face cache (~/.cache/huggingface) "
            "and set HF_HUB_OFFLINE=1, or train with --pretrained=False."
        ) from None


def count_params(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def count_flops(model: nn.Module, img_size: int, device: torch.device | str = "cpu") -> int:
    """Forward FLOPs for one image at ``img_size`` (2 per multiply-add, as torch counts them)."""
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, img_size, img_size, device=device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def model_stats(model: nn.Module, exp: ExperimentConfig, device) -> dict:
    total, trainable = count_params(model)
    return {
        "model_name": exp.model_name,
        "params_total": total,
        "params_trainable": trainable,
        "flops": count_flops(model, exp.img_size, device),
        "input_shape": [3, exp.img_size, exp.img_size],
    }
