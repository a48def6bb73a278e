"""JSON log lines shaped like Kilo's (go-kit), shared by ``kg`` and ``kgctl connect``.

One object per line, keys sorted: ``ts`` (UTC RFC 3339 with nanoseconds), ``caller``
(``file.py:123``), ``level`` (``debug|info|warn|error``), ``msg``, ``component`` where set,
any fields passed as ``fields={...}``, and ``error`` for an exception. Existing log queries
written for Kilo keep working.

Kilo's start-up and shutdown lines have no level; go-kit's level filter lets such lines
through at every ``--log-level``, even ``none``. Log them at :data:`UNLEVELED`, which no
level silences and which writes no ``level`` field.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, TextIO

_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn"}
# Above CRITICAL: "--log-level=none" silences everything leveled.
NONE = logging.CRITICAL + 10
# Above NONE: Kilo's unleveled lines, written at every level.
UNLEVELED = NONE + 10


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
        if record.levelno != UNLEVELED:
            entry["level"] = _NAMES.get(record.levelno, "error")
        component = getattr(record, "component", None)
        if component:
            entry["component"] = component
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in entry})
        if record.exc_info and record.exc_info[1] is not None:
            entry.setdefault("error", str(record.exc_info[1]))
        return json.dumps(entry, sort_keys=True, default=str)


class Logger(logging.LoggerAdapter[logging.Logger]):
    """``log.info(msg, fields={...})``, tagged with a ``component`` when given one."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(kwargs.pop("extra", None) or {})
        component = (self.extra or {}).get("component")
        if component:
            extra.setdefault("component", component)
        fields = kwargs.pop("fields", None)
        if fields:
            extra["fields"] = fields
        kwargs["extra"] = extra
        return msg, kwargs


def configure(name: str, level: int, stream: TextIO) -> logging.Logger:
    """Send logger ``name`` (and its children) to ``stream`` as JSON lines."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
