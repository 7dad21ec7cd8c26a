"""Logging set-up: one line per event, secrets redacted whatever the source.

``SOPHON_LOG_FORMAT=json`` (or ``sophon serve --log-format json``) makes every
line one JSON object: ``ts``, ``level``, ``logger``, ``pid``, ``message`` and,
for errors, ``exception``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable, Iterable

_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


class RedactSecrets(logging.Filter):
    """Replaces every known secret value in a record's final message with ``***``."""

    def __init__(self, secrets: Callable[[], Iterable[str]]):
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = [s for s in self._secrets() if s and len(s) >= 6]
        if not secrets:
            return True
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        exc_text = record.exc_text or ""
        for s in secrets:
            text = text.replace(s, "***")
            exc_text = exc_text.replace(s, "***")
        record.msg, record.args = text, None
        record.exc_text = exc_text or None
        return True


def json_enabled() -> bool:
    return (os.environ.get("SOPHON_LOG_FORMAT") or "text").strip().lower() == "json"


class JsonFormatter(logging.Formatter):
    """One JSON object per line (the message already redacted by ``RedactSecrets``)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "pid": record.process,
               "message": record.getMessage()}
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


def formatter() -> logging.Formatter:
    return JsonFormatter() if json_enabled() else logging.Formatter(_FORMAT)


def use_json_for_gunicorn() -> None:
    """Give gunicorn's own handlers (error and access log) the JSON formatter."""
    for name in ("gunicorn.error", "gunicorn.access"):
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(JsonFormatter())


def configure(secrets: Callable[[], Iterable[str]]) -> None:
    """Log to stderr at ``SOPHON_LOG_LEVEL`` (default INFO) with secrets redacted."""
    root = logging.getLogger()
    if not any(getattr(h, "_sophon", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(formatter())
        handler._sophon = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(os.environ.get("SOPHON_LOG_LEVEL", "INFO").upper())
    redact = RedactSecrets(secrets)
    for handler in root.handlers:
        if getattr(handler, "_sophon", False):
            handler.filters = [redact]
    # gunicorn's logs have handlers of their own; a logger filter covers what it logs itself.
    for name in ("gunicorn.error", "gunicorn.access"):
        gunicorn_log = logging.getLogger(name)
        gunicorn_log.filters = [f for f in gunicorn_log.filters if not isinstance(f, RedactSecrets)] + [redact]
