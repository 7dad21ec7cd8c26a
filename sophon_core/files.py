"""Writing small files safely: never half-written, secrets never readable by others."""
from __future__ import annotations

import contextlib
import os
import secrets as _random
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Write to a temporary file in the same folder, fsync it, then rename over ``path``.

    :param mode: the file's permissions (e.g. 0o600 for a key); default: those of the
        file it replaces, or 0600 for a new one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        elif path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    sync_folder(path.parent)


def create_private(path: Path, text: str) -> bool:
    """Create ``path`` (mode 0600) holding ``text``, unless it exists.

    The file appears with its content already in it (written beside it, then
    hard-linked into place), so a process racing another never reads it empty.
    :return: True when this call created it; False when it existed (left as it was).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{_random.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    sync_folder(path.parent)
    return True


def sync_folder(folder: Path) -> None:
    """Make the names in ``folder`` (a file made, renamed or deleted) survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
