"""Helpers for testing Sophon and its plugins against real processes on loopback."""
from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from .server import APP, gunicorn_argv


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range.

    A port the kernel handed out with ``bind(0)`` comes from the ephemeral range,
    where an outgoing connection can take it again before the server binds it;
    ports below that range are only ever taken by an explicit bind.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(100):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """The gunicorn workers' pids (children of the master), from /proc."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                    pids.append(int(entry.name))
        return sorted(pids)


@contextlib.contextmanager
def gunicorn(env: Mapping[str, str], *, port: int | None = None, workers: int = 2, threads: int = 4,
             log: Path | None = None, timeout: float = 30.0, app: str = APP) -> Iterator[Server]:
    """Run the real app (or ``app``, a WSGI app gunicorn can import) under a real gunicorn with
    Sophon's settings, on a free loopback port (own process group).

    Waits until ``/healthz`` answers (or the process exits: then raise with its log).
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(gunicorn_argv(f"127.0.0.1:{port}", workers, threads, app),
                            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
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
        yield Server(url, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if log:
            out.close()


