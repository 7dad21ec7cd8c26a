"""Run the app under gunicorn as a child process, with the reply sender next to it (``sophon serve``)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping

APP = "sophon_core.app:create_app()"
# gunicorn threads per worker (``sophon serve --threads``). A webhook thread waits for the
# fsync of its group commit (store.accept_inbound) before answering; the webhooks waiting
# meanwhile share the next one. With 4 threads at most 4 acknowledgements shared an fsync
# (about 2 on average); 16 let a worker's group commits take 8 to 12.
DEFAULT_THREADS = 16


def gunicorn_argv(bind: str, workers: int, threads: int, app: str = APP) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(workers),
            "--worker-class", "gthread", "--threads", str(threads), "--graceful-timeout", "20",
            "--access-logfile", "-", "--config", "python:sophon_core.gunicorn_conf"]
    if _has_setting("control_socket_disable"):
        # Recent gunicorn opens a control socket under ~/.gunicorn by default; several
        # servers on one machine (tests, demo) would fight over it.
        argv.append("--no-control-socket")
    return argv + [app]


def _has_setting(name: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(s.name == name for s in KNOWN_SETTINGS)


def _load_prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_prctl = _load_prctl()  # looked up here, in the parent: a child between fork and exec only calls it


def _die_with_parent() -> None:
    """In a child, before exec: get SIGTERM when the parent (``sophon serve``) dies, even by SIGKILL."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def sender_argv(threads: int) -> list[str]:
    return [sys.executable, "-m", "sophon_core.sender", "--threads", str(threads)]


class _Sender:
    """The reply sender child (sender.py): started, started again when it dies (after
    1, 2, 4 ... 30 s; at once again once it ran a minute), stopped with the server."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.argv, self.env = argv, env
        self.proc: subprocess.Popen | None = None
        self.failures = 0
        self.started_at = 0.0
        self.restart_at = 0.0
        self.stopping = False

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()

    def check(self) -> None:
        if self.stopping or self.proc is None or self.proc.poll() is None:
            return
        now = time.monotonic()
        if not self.restart_at:
            self.failures = 0 if now - self.started_at > 60 else self.failures + 1
            delay = min(30.0, 2.0 ** (self.failures - 1)) if self.failures else 0.0
            print(f"sophon: the reply sender exited with {self.proc.returncode}; starting it again"
                  + (f" in {delay:g} s" if delay else ""), file=sys.stderr, flush=True)
            self.restart_at = now + delay
        if now >= self.restart_at:
            self.restart_at = 0.0
            self.start()

    def signal(self, signum: int) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout: float) -> None:
        self.stopping = True
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # (again, if Ctrl-C / SIGTERM reached it already: harmless)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_gunicorn(bind: str, workers: int, threads: int, env: Mapping[str, str] | None = None, *,
                 replies: str = "sender", access_log: bool = True) -> int:
    """Start gunicorn and, with ``replies="sender"``, the reply sender next to it
    (``SOPHON_REPLIES`` in ``env`` decides when set); forward Ctrl-C / SIGTERM to both;
    return gunicorn's exit code."""
    env = dict(os.environ if env is None else env)
    replies = (env.get("SOPHON_REPLIES") or replies).strip().lower()
    env["SOPHON_REPLIES"] = replies
    env.setdefault("SOPHON_WORKERS", str(workers))
    own_metrics = None
    if replies == "sender" and not env.get("PROMETHEUS_MULTIPROC_DIR"):
        # one folder for the workers' and the sender's counters: /metrics sums both
        from .metrics import fresh_multiproc_dir

        own_metrics = fresh_multiproc_dir(Path(env.get("SOPHON_DATA_DIR") or ".sophon"), os.getpid())
        env["PROMETHEUS_MULTIPROC_DIR"] = str(own_metrics)
    argv = gunicorn_argv(bind, workers, threads)
    if not access_log:
        i = argv.index("--access-logfile")
        del argv[i:i + 2]
    proc = subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent)
    sender = None
    if replies == "sender":
        from .settings import Settings

        sender = _Sender(sender_argv(Settings.from_env(env).pipeline_threads * workers), env)
        sender.start()

    def forward(signum, frame):
        proc.send_signal(signum)
        if sender is not None:
            sender.signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if sender is not None:
                    sender.check()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if sender is not None:
            sender.stop(timeout=25)
        if own_metrics is not None:
            from .metrics import remove_multiproc_dir

            remove_multiproc_dir(own_metrics)
