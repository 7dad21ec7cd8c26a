"""Helpers for testing Sophon and its plugins against real processes on loopback."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Mapping

from .server import gunicorn_argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gunicorn(env: Mapping[str, str], *, port: int | None = None, workers: int = 2, threads: int = 4,
             log: Path | None = None, timeout: float = 30.0) -> Iterator[str]:
    """Run the real app under a real gunicorn on a free loopback port; yield its base URL.

    Waits until ``/healthz`` answers (or the process exits: then raise with its log).
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(gunicorn_argv(f"127.0.0.1:{port}", workers, threads),
                            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                text = Path(log).read_text(errors="replace") if log else ""
                raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{text[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not answer on {url} within {timeout} s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()


