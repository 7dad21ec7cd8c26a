"""What the benchmark needs besides the project's venv: wrk (Debian package) and Flask (pip).

bench/run and tests/test_bench_smoke.py both go through ``ensure_all``: wrk is
installed with apt-get when it is missing, Flask with pip into the running venv
(it is a benchmark-only dependency, not one of the project's).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys


class MissingTool(RuntimeError):
    """A tool the benchmark needs is missing and could not be installed."""


def _apt(args: list[str]) -> subprocess.CompletedProcess:
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run([*sudo, "apt-get", *args], env=env, check=False, capture_output=True, text=True, timeout=900)


def ensure_wrk(log=print) -> str:
    """The path of ``wrk``; installs Debian's package when it is missing.

    :raises MissingTool: it is missing and apt-get could not install it.
    """
    found = shutil.which("wrk")
    if found:
        return found
    if not shutil.which("apt-get"):
        raise MissingTool("wrk is not installed and this system has no apt-get: install wrk "
                          "(https://github.com/wg/wrk) and run again")
    log("bench: wrk is missing; installing it: apt-get install -y wrk")
    out = _apt(["install", "-y", "-q", "wrk"])
    if out.returncode != 0:
        log("bench: apt-get install failed; running apt-get update, then trying again")
        _apt(["update", "-q"])
        out = _apt(["install", "-y", "-q", "wrk"])
    found = shutil.which("wrk")
    if out.returncode != 0 or not found:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-8:])
        raise MissingTool(f"wrk is not installed and `apt-get install -y wrk` failed "
                          f"(exit {out.returncode}); install it by hand (root needed):\n{tail}")
    return found


def ensure_flask(log=print) -> None:
    """Flask in this interpreter's environment (for the quick-start reference app)."""
    if importlib.util.find_spec("flask") is not None:
        return
    log(f"bench: Flask is missing; installing it into {sys.prefix} with pip (benchmark only)")
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "flask"], check=False, capture_output=True,
                         text=True, timeout=900)
    importlib.invalidate_caches()
    if out.returncode != 0 or importlib.util.find_spec("flask") is None:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-8:])
        raise MissingTool(f"Flask is not installed and `pip install flask` failed (exit {out.returncode}):\n{tail}")


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "--version"], check=False, capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def ensure_all(log=print) -> dict:
    wrk = ensure_wrk(log)
    ensure_flask(log)
    return {"wrk": wrk, "wrk_version": wrk_version(wrk)}
