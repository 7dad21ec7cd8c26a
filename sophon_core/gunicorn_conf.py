"""gunicorn settings Sophon adds (``--config python:sophon_core.gunicorn_conf``).

Loaded by the gunicorn master before any worker starts:

- metrics: a fresh ``PROMETHEUS_MULTIPROC_DIR`` under ``SOPHON_DATA_DIR`` (one
  folder per master, removed at exit; folders of masters that died are removed
  at the next start), so ``/metrics`` sums every worker;
- logs: with ``SOPHON_LOG_FORMAT=json``, gunicorn's own lines (its error and
  access logs) are JSON objects too;
- garbage collection: each worker, once it has built the app, puts what it made
  so far out of the collector's reach (``post_worker_init``).
"""
from __future__ import annotations

import gc
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


def post_worker_init(worker) -> None:
    """The worker has built the app: move every object made so far (modules, the app and its
    runtime, some 46,000) to the collector's permanent generation (``gc.freeze``), so that
    a full collection walks only what was made since.

    Why: a full collection holds the worker's GIL while it walks every object, and with the
    journal it came once every few seconds (the records waiting for the mover outlive the
    young generations). Under load that stopped every request of the worker for 130 to 230
    ms at a time: the acknowledgements' p99 with 2 workers at 16 connections went from
    about 25 ms to 90 to 100 in such windows (README, Performance)."""
    gc.collect()  # (what is garbage now is not frozen)
    gc.freeze()


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    from sophon_core import metrics

    if _own_dir is not None:
        metrics.remove_multiproc_dir(_own_dir)

