"""Notices said once per process: a sweep worker runs many trials, and the same line each time is noise."""
from __future__ import annotations

import logging

_SAID: set[tuple[str, str]] = set()


def say_once(logger: logging.Logger, message: str, *args) -> None:
    """``logger.info(message % args)`` the first time this process says it."""
    key = (logger.name, message % args if args else message)
    if key not in _SAID:
        _SAID.add(key)
        logger.info(message, *args)
