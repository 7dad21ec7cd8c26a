"""gunicorn settings Sophon adds (``--config python:sophon_core.gunicorn_conf``).

Loaded by the gunicorn master before any worker starts:

- metrics: a fresh ``PROMETHEUS_MULTIPROC_DIR`` under ``SOPHON_DATA_DIR`` (one
  folder per master, removed at exit; folders of masters that died are removed
  at the next start), so ``/metrics`` sums every worker;
- logs: with ``SOPHON_LOG_FORMAT=json``, gunicorn's own lines (its error and
  access logs) are JSON objects too.
"""
from __future__ import annotations

import os
from pathlib import Path

from gunicorn import glogging

from sophon_core import logs

_own_dir: Path | None = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # (``sophon serve`` sets it for gunicorn and the sender)
    _own_dir = (Path(os.environ.get("SOPHON_DATA_DIR") or ".sophon") / "metrics" / str(os.getpid())).resolve()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_own_dir)


class _Logger(glogging.Logger):
    """gunicorn's logger, with JSON lines from the first one on when SOPHON_LOG_FORMAT=json
    (``setup`` also runs again on SIGHUP)."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        if logs.json_enabled():
            logs.use_json_for_gunicorn()


logger_class = _Logger


def on_starting(server) -> None:
    from sophon_core import metrics  # (prometheus_client only once PROMETHEUS_MULTIPROC_DIR is set)

    if _own_dir is not None:
        metrics.fresh_multiproc_dir(_own_dir.parent.parent, os.getpid())


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    from sophon_core import metrics

    if _own_dir is not None:
        metrics.remove_multiproc_dir(_own_dir)

