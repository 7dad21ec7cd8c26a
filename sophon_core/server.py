"""Run the app under gunicorn as a child process (``sophon serve``)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Mapping

APP = "sophon_core.app:create_app()"
# gunicorn threads per worker (``sophon serve --threads``). A webhook thread waits for the
# fsync of its group commit (store.accept_inbound) before answering; the webhooks waiting
# meanwhile share the next one. With 4 threads at most 4 acknowledgements shared an fsync
# (about 2 on average); 16 let a worker's group commits take 8 to 12.
DEFAULT_THREADS = 16


def gunicorn_argv(bind: str, workers: int, threads: int) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(workers),
            "--worker-class", "gthread", "--threads", str(threads), "--graceful-timeout", "20",
            "--access-logfile", "-", "--config", "python:sophon_core.gunicorn_conf"]
    if _has_setting("control_socket_disable"):
        # Recent gunicorn opens a control socket under ~/.gunicorn by default; several
        # servers on one machine (tests, demo) would fight over it.
        argv.append("--no-control-socket")
    return argv + [APP]


def _has_setting(name: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(s.name == name for s in KNOWN_SETTINGS)


def run_gunicorn(bind: str, workers: int, threads: int, env: Mapping[str, str] | None = None) -> int:
    """Start gunicorn, forward Ctrl-C / SIGTERM to it, return its exit code."""
    proc = subprocess.Popen(gunicorn_argv(bind, workers, threads), env=dict(env or os.environ))

    def forward(signum, frame):
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
