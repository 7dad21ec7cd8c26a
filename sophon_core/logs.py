"""Logging set-up: one line per event, secrets redacted whatever the source."""
from __future__ import annotations

import logging
import os
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


def configure(secrets: Callable[[], Iterable[str]]) -> None:
    """Log to stderr at ``SOPHON_LOG_LEVEL`` (default INFO) with secrets redacted."""
    root = logging.getLogger()
    if not any(getattr(h, "_sophon", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._sophon = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(os.environ.get("SOPHON_LOG_LEVEL", "INFO").upper())
    redact = RedactSecrets(secrets)
    for handler in root.handlers:
        if getattr(handler, "_sophon", False):
            handler.filters = [redact]
    # gunicorn's error log has handlers of its own; a logger filter covers what it logs itself.
    gunicorn_log = logging.getLogger("gunicorn.error")
    gunicorn_log.filters = [f for f in gunicorn_log.filters if not isinstance(f, RedactSecrets)] + [redact]
