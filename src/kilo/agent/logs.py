"""JSON log lines on stdout, shaped like Kilo's (go-kit) so existing log queries keep working.

One object per line, keys sorted, always ``ts`` (UTC RFC 3339 with nanoseconds) and
``caller`` (``file.py:123``), ``level`` and ``msg``, plus ``component`` and any extra
fields passed with ``extra={"fields": {...}}``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

from kilo.agent.settings import LogLevel

LOGGER = "kilo"

_LEVELS = {
    LogLevel.ALL: logging.DEBUG,
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARN: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
    LogLevel.NONE: logging.CRITICAL + 10,
}
_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn"}


def timestamp(seconds_ns: int) -> str:
    seconds, nanos = divmod(seconds_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": timestamp(int(record.created * 1_000_000_000)),
            "caller": f"{os.path.basename(record.pathname)}:{record.lineno}",
            "msg": record.getMessage(),
        }
        if not getattr(record, "unleveled", False):
            entry["level"] = _NAMES.get(record.levelno, "error")
        component = getattr(record, "component", None)
        if component:
            entry["component"] = component
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in entry})
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = str(record.exc_info[1])
        return json.dumps(entry, sort_keys=True, default=str)


def configure(level: LogLevel, stream: TextIO | None = None) -> logging.Logger:
    logger = logging.getLogger(LOGGER)
    logger.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JSONFormatter())
    logger.addHandler(handler)
    logger.setLevel(_LEVELS[level])
    logger.propagate = False
    return logger


def get(component: str = "kilo") -> logging.LoggerAdapter[logging.Logger]:
    return _Component(logging.getLogger(LOGGER), {"component": component})


class _Component(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(kwargs.pop("extra", None) or {})
        extra.setdefault("component", self.extra["component"] if self.extra else None)
        fields = kwargs.pop("fields", None)
        if fields:
            extra["fields"] = fields
        kwargs["extra"] = extra
        return msg, kwargs
