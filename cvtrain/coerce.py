"""Values from text: what the environment, the command line and ``wandb agent`` hand the trainer, typed."""
from __future__ import annotations

import ast
import types
import typing
from typing import Any


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


def base_type(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp, type(None) in typing.get_args(tp)
    return tp, False


def coerce(name: str, value: Any, tp) -> Any:
    """Coerce ``value`` to type ``tp``; raise ValueError with a readable reason."""
    base, optional = base_type(tp)
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


