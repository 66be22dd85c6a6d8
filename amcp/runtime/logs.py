"""JSON structured logs, one object per line, with secrets redacted.

Fields passed through ``extra=`` become keys of the object. Any key that looks like a secret
(password, token, secret, key material) is replaced by ``"[redacted]"`` so a careless call
cannot leak credentials into the journal.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_SECRET = re.compile(r"pass(word)?|secret|token|private|psk|session_key|api_key", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: (REDACTED if _SECRET.search(k) else v) for k, v in fields.items()}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
        out.update(redact(extra))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "info", *, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.Formatter.converter = time.gmtime


def set_level(level: str) -> None:
    """Change the log level of a running daemon (its SIGHUP reload)."""
    logging.getLogger().setLevel(level.upper())
