"""The device a run trains on."""
from __future__ import annotations

import torch

from .config import ConfigError


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError([f"device={name!r}: CUDA is not available on this machine; use device=auto or cpu"])
    return torch.device(name)

