"""Structured logging: one JSON object per line on stderr, secrets redacted.

`configure_logging(service)` installs the formatter once per process; `register_secret(value)`
makes every later log line replace that value with `***` (tokens, passwords, URLs with tokens).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from services.runtime import tracing

_SECRETS: set[str] = set()
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def register_secret(value: str | None) -> None:
    """Never print `value` in a log line again (ignored when shorter than 4 characters)."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def redact(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if tracing.ENABLED and "trace_id" not in payload:
            ids = tracing.current_ids()
            if ids is not None:
                payload["trace_id"], payload["span_id"] = ids
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(payload, default=str))


def configure_logging(service: str, level: str = "INFO") -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
