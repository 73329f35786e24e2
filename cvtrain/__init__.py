"""cvtrain: the fully instrumented timm trainer every cvsweep trial runs."""
from .config import Config, ConfigError
from .validation import validate_config

__all__ = ["Config", "ConfigError", "validate_config", "train", "TrainResult"]


def __getattr__(name):
    # torch and timm load only when training is asked for: `cvsweep validate` stays fast.
    if name in ("train", "TrainResult"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(name)
