"""Logging set-up: one line per event, as text or JSON (``MMC_LOG_FORMAT``)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is data.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    # The timestamp ends in "Z": it must be UTC, whatever the machine's time zone.
    @staticmethod
    def converter(seconds: float | None = None, /) -> time.struct_time:
        return time.gmtime(seconds)

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def escape(text: str) -> str:
    """``text`` with every control or other non-printable character as a Python escape
    (``\\n``, ``\\x1b``, ``\\u202e``): request paths and headers are the client's, and a
    raw newline would let it write a line of its own into the log, an ESC sequence drive
    the operator's terminal."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second = -1
        self._second_text = ""
        self._uses_time = super().usesTime()

    def usesTime(self) -> bool:
        # The format never changes: found once, not searched for in it on every line.
        return self._uses_time

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # The default format, with the date and time rendered once per second, not per line.
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._second_text},{int(record.msecs):03d}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        # The line itself, escaped; a traceback is appended after it as it is, on lines
        # of its own.
        line = escape(super().formatMessage(record))
        extras = [
            f"{k}={escape(v if type(v) is str else str(v))}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and k[:1] != "_"
        ]
        if extras:
            line += " " + " ".join(extras)
        return line


def configure(level: str, fmt: str) -> None:
    # One access line per request: skip what no formatter of ours prints (the caller's
    # file and line, thread and process names), as the logging HOWTO's "Optimization"
    # section suggests.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # aiosqlite logs every statement with its parameters at DEBUG: password hashes,
    # session and token digests, encrypted broker secrets. mmc's own DEBUG never needs them.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLogger().level))
