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
import shutil
from pathlib import Path

from gunicorn import glogging

from sophon_core import logs

_own_dir: Path | None = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_dir = (Path(os.environ.get("SOPHON_DATA_DIR") or ".sophon") / "metrics" / str(os.getpid())).resolve()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_own_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Logger(glogging.Logger):
    """gunicorn's logger, with JSON lines from the first one on when SOPHON_LOG_FORMAT=json
    (``setup`` also runs again on SIGHUP)."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        if logs.json_enabled():
            logs.use_json_for_gunicorn()


logger_class = _Logger


def on_starting(server) -> None:
    if _own_dir is None:
        return
    for old in _own_dir.parent.glob("*"):
        if old.name.isdigit() and old != _own_dir and not _alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(_own_dir, ignore_errors=True)
    _own_dir.mkdir(parents=True)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if _own_dir is not None:
        shutil.rmtree(_own_dir, ignore_errors=True)

