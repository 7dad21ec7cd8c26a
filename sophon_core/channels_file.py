"""Writing ``channels.json``: serialized, validated, atomic.

Every writer (the CLI now; the dashboard and admin API later) goes through
``edit``: it takes an exclusive lock (a ``.lock`` file beside the channels
file, shared by every process), reads the current file, applies a change,
validates the result exactly as start-up does, and replaces the file in one
``rename``. An invalid result changes nothing. Readers never see a half-written
file.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import pluggy

from . import config as config_mod
from .errors import ConfigError, Problem
from .models import ChannelType
from .settings import Settings


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    lock_path = Path(str(path) + ".lock")
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def edit(path: Path, change: Callable[[dict], Any], *, pm: pluggy.PluginManager,
         types: Mapping[str, ChannelType], agents: Iterable[str], settings: Settings) -> config_mod.ChannelsConfig:
    """Apply ``change`` (which mutates the parsed file in place) under the lock.

    :raises ConfigError: the file is unreadable now, or the change would make it
        invalid; in both cases the file is left as it was.
    """
    path = Path(path)
    with locked(path):
        text = path.read_text(encoding="utf-8") if path.exists() else '{"channels": []}'
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(str(path), [Problem(
                "(file)", f"line {exc.lineno} column {exc.colno}", f"not valid JSON: {exc.msg}")]) from None
        data = config_mod.normalize(data)
        change(data)
        cfg = config_mod.validate_data(data, types, pm, settings, source=str(path), agents=agents)
        write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return cfg


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync it, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def find(data: dict, channel_id: str) -> dict:
    for item in data.get("channels", []):
        if isinstance(item, dict) and item.get("id") == channel_id:
            return item
    have = ", ".join(str(i.get("id")) for i in data.get("channels", []) if isinstance(i, dict)) or "none"
    raise KeyError(f"no channel {channel_id!r} (have: {have})")
