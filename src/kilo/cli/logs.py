"""JSON log lines for ``kgctl connect``, in the shape of the agent's (and Kilo's go-kit) logs.

One object per line, keys sorted: ``ts`` (UTC RFC 3339 with nanoseconds), ``caller``,
``level``, ``msg`` and any fields given with ``fields={...}``. The agent has its own copy
(``kilo.agent.logs``): the import contract keeps the two composition roots apart, and
twenty lines are cheaper than a shared module both would have to agree on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, TextIO

LOGGER = "kilo.connect"
LEVELS = {
    "all": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "none": logging.CRITICAL + 10,
}
_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn"}


def _timestamp(seconds_ns: int) -> str:
    seconds, nanos = divmod(seconds_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(int(record.created * 1_000_000_000)),
            "caller": f"{os.path.basename(record.pathname)}:{record.lineno}",
            "level": _NAMES.get(record.levelno, "error"),
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in entry})
        return json.dumps(entry, sort_keys=True, default=str)


class Logger(logging.LoggerAdapter[logging.Logger]):
    """``log.info(msg, fields={...})``."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        fields = kwargs.pop("fields", None)
        if fields:
            kwargs["extra"] = {**(kwargs.get("extra") or {}), "fields": fields}
        return msg, kwargs


def configure(level: str, stream: TextIO) -> Logger:
    logger = logging.getLogger(LOGGER)
    logger.handlers.clear()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger.addHandler(handler)
    logger.setLevel(LEVELS[level])
    logger.propagate = False
    return Logger(logger, {})
