"""Structured logs with ISO 8601 UTC timestamps, as JSON lines or plain text, secrets redacted.

Two formats of the same record (docs/operations.md, "Logs"):

- ``json``: one object per line, for journald and files::

    {"ts": "2025-03-01T12:00:00.123Z", "level": "info", "logger": "gateway.uplink",
     "msg": "uplink connected", "host": "cloud.example", "port": 8883}

- ``text``: one line for a person at a terminal::

    2025-03-01T12:00:00.123Z INFO  gateway.uplink: uplink connected host=cloud.example port=8883

``auto`` (the default of ``[log] format``) picks text when the stream is a terminal, JSON
otherwise (journald, a file, a pipe). Fields passed through ``extra=`` become keys of the object
(``key=value`` in text). Any key that looks like a secret (password, token, secret, key
material) is replaced by ``"[redacted]"``, and so is any value holding a PEM private key, so a
careless call cannot leak credentials into the journal.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from datetime import datetime
from typing import Any, Literal, TextIO

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_SECRET = re.compile(r"pass(word)?|secret|token|private|psk|session_key|api_key", re.IGNORECASE)
_PEM_KEY = "PRIVATE KEY-----"
REDACTED = "[redacted]"

LogFormat = Literal["auto", "text", "json"]
_BARE = re.compile(r"[^\s\"'=\\]+")


def redact(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with every secret-looking key, and every PEM private key, redacted."""
    return {
        k: (REDACTED if _SECRET.search(k) or (isinstance(v, str) and _PEM_KEY in v) else v)
        for k, v in fields.items()
    }


def iso_utc(created: float) -> str:
    """Unix seconds → ``2025-03-01T12:00:00.123Z`` (ISO 8601, UTC, milliseconds)."""
    ms = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


def parse_timestamp(ts: str) -> float:
    """A log line's ``ts`` back to Unix seconds (for tools that read the JSON log)."""
    return datetime.fromisoformat(ts).timestamp()


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return redact({k: v for k, v in record.__dict__.items() if k not in _RESERVED})


def _message(record: logging.LogRecord) -> str:
    msg = record.getMessage()
    return REDACTED if _PEM_KEY in msg else msg


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": iso_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _text_value(value: Any) -> str:
    """A string bare when it can be, else quoted; anything else as compact JSON."""
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else json.dumps(value)
    return json.dumps(value, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``<ts> LEVEL logger: message key=value ...``; a traceback follows on its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{iso_utc(record.created)} {record.levelname:<5} {record.name}: {_message(record)}"
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def formatter_for(fmt: LogFormat, stream: Any) -> logging.Formatter:
    """The formatter ``fmt`` names; ``auto`` is text on a terminal, JSON anywhere else."""
    if fmt == "auto":
        isatty = getattr(stream, "isatty", None)
        try:
            fmt = "text" if isatty is not None and isatty() else "json"
        except ValueError:  # a closed stream
            fmt = "json"
    if fmt == "text":
        return TextFormatter()
    if fmt == "json":
        return JsonFormatter()
    raise ValueError(f"log format must be auto, text or json, got {fmt!r}")


def setup_logging(
    level: str = "info", *, fmt: LogFormat = "auto", stream: TextIO | None = None
) -> None:
    """Send every log record to ``stream`` (stderr) in the format ``fmt``, from ``level`` up.
    Called again, it replaces what an earlier call set up."""
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter_for(fmt, out))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def set_level(level: str) -> None:
    """Change the log level of a running daemon (its SIGHUP reload)."""
    logging.getLogger().setLevel(level.upper())


_started: dict[str, float] = {}


def log_startup(component: str, version: str, node_id: str, config_path: object) -> None:
    """The daemon's first line: what runs, which build, as which node, from which file."""
    _started[component] = time.monotonic()
    logging.getLogger(component).info(
        "%s starting",
        component,
        extra={
            "event": "startup",
            "component": component,
            "version": version,
            "node_id": node_id,
            "config": str(config_path) if config_path is not None else "",
            "pid": os.getpid(),
            "python": ".".join(str(n) for n in sys.version_info[:3]),
        },
    )


def log_shutdown(component: str, reason: str, *, exit_code: int | None = None) -> None:
    """The daemon's last line: why it stops, after how long it ran, with which exit code."""
    extra: dict[str, Any] = {"event": "shutdown", "component": component, "reason": reason}
    started = _started.pop(component, None)
    if started is not None:
        extra["uptime_s"] = round(time.monotonic() - started, 3)
    if exit_code is not None:
        extra["exit_code"] = exit_code
    logging.getLogger(component).info("%s stopped", component, extra=extra)
