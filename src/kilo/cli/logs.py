"""``kgctl connect``'s JSON logs, in the agent's format (:mod:`kilo.jsonlog`)."""

from __future__ import annotations

import logging
from typing import TextIO

from kilo import jsonlog
from kilo.jsonlog import Logger

LOGGER = "kilo.connect"
LEVELS = {
    "all": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "none": jsonlog.NONE,
}

__all__ = ["LEVELS", "LOGGER", "Logger", "configure"]


def configure(level: str, stream: TextIO) -> Logger:
    return Logger(jsonlog.configure(LOGGER, LEVELS[level], stream), {})
