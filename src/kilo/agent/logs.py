"""The agent's JSON logs on stdout (the format lives in :mod:`kilo.jsonlog`)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from kilo import jsonlog
from kilo.agent.settings import LogLevel

LOGGER = "kilo"

_LEVELS = {
    LogLevel.ALL: logging.DEBUG,
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARN: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
    LogLevel.NONE: jsonlog.NONE,
}


def configure(level: LogLevel, stream: TextIO | None = None) -> logging.Logger:
    return jsonlog.configure(LOGGER, _LEVELS[level], stream or sys.stdout)


def get(component: str = "kilo") -> jsonlog.Logger:
    return jsonlog.Logger(logging.getLogger(LOGGER), {"component": component})
