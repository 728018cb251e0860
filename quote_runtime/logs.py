"""Logging for the service and the publisher: JSON lines when stderr is not a terminal
(what a log shipper wants), readable lines when it is (what a developer wants).

Call sites pass the facts as `extra={...}`; both formats show them. LOG_LEVEL and
LOG_FORMAT are LogSettings, a group of every process's settings.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .node import NODE_ID
from .settings import SettingsGroup, one_of, refused

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("auto", "json", "text")


@dataclass(frozen=True)
class LogSettings(SettingsGroup):
    # The level, and json, text or auto (JSON unless stderr is a terminal).
    log_level: str = "INFO"
    log_format: str = "auto"

    def check(self) -> None:
        super().check()
        if self.log_level.upper() not in LOG_LEVELS:
            raise refused("log_level", one_of(LOG_LEVELS), self.log_level)
        if self.log_format.lower() not in LOG_FORMATS:
            raise refused("log_format", one_of(LOG_FORMATS) + " (auto: JSON unless stderr is "
                          "a terminal)", self.log_format)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": NODE_ID,
            "msg": record.getMessage(),
            **_extra(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        # Every line names its worker: with WORKERS > 1 their lines interleave.
        super().__init__(f"%(asctime)s %(levelname)-7s {NODE_ID} %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _extra(record)
        if extra:
            line += "  " + " ".join(f"{k}={v}" for k, v in extra.items())
        return line


def configure(level: str | int = "INFO", log_format: str = "auto") -> None:
    """One handler on the root logger; uvicorn's loggers go through it too.

    `level` and `log_format` (json, text, or auto: JSON unless stderr is a terminal) are
    LOG_LEVEL and LOG_FORMAT, which LogSettings has checked."""
    fmt = log_format.lower()
    json = fmt == "json" if fmt in ("json", "text") else not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # One line per connection is noise at ten thousand connections; ours log what matters.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
