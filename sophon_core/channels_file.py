"""Writing ``channels.json``: serialized, validated, atomic.

Every writer (the CLI now; the dashboard and admin API later) goes through
``edit``: it takes an exclusive lock (a ``.lock`` file beside the channels
file, shared by every process), reads the current file, applies a change,
validates the result exactly as start-up does, encrypts any secret still in
plain text (see ``secrets``), and replaces the file in one ``rename``. An invalid result changes nothing. Readers never see a half-written
file.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import pluggy

from . import config as config_mod
from . import secrets
from .files import write_atomic
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
        # Only a valid result is encrypted (and only then is a key file made) and written.
        if secrets.encrypt_plaintext(data, secret_fields(types), settings):
            cfg = config_mod.validate_data(data, types, pm, settings, source=str(path), agents=agents)
        write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return cfg


def find(data: dict, channel_id: str) -> dict:
    for item in data.get("channels", []):
        if isinstance(item, dict) and item.get("id") == channel_id:
            return item
    have = ", ".join(str(i.get("id")) for i in data.get("channels", []) if isinstance(i, dict)) or "none"
    raise KeyError(f"no channel {channel_id!r} (have: {have})")


def secret_fields(types: Mapping[str, ChannelType]) -> dict[str, frozenset[str]]:
    return {name: ct.secret_fields for name, ct in types.items()}


def rotate_key(path: Path, *, pm: pluggy.PluginManager, types: Mapping[str, ChannelType],
               agents: Iterable[str], settings: Settings) -> tuple[int, str]:
    """Re-encrypt every secret under a new key. :return: (secrets re-encrypted, key source).

    With the key file: a new key is put first in the file (the old one kept, so
    every process can still read the file at each step), the channels file is
    re-encrypted, then the old key is dropped. With ``SOPHON_SECRET_KEY``: the
    secrets are re-encrypted under its first key; the caller must have put the
    new key first and may drop the old ones afterwards.

    :raises SecretKeyError: no key, or a secret no key decrypts (nothing changed).
    """
    path = Path(path)
    with locked(path):
        old = secrets.Keyring.load(settings)
        from_env = bool((settings.env.get(secrets.ENV) or "").strip())
        if from_env:
            if old is None or len(old.keys) < 2:
                raise secrets.SecretKeyError(
                    f"{secrets.ENV} holds one key. Put a new key first and keep the old one after a comma "
                    f"({secrets.ENV}=NEW,OLD; make one with `sophon channels rotate-key --print-new-key`), "
                    "run this again, then drop OLD")
            new, key_path = secrets.Keyring(old.keys[:1], secrets.ENV), None
        else:
            key_path = secrets.key_file(settings)
            fresh = secrets.new_key()
            new = secrets.Keyring([fresh], str(key_path))
            secrets.write_keys(key_path, [fresh] + (old.keys if old else []))
        data = config_mod.normalize(json.loads(path.read_text(encoding="utf-8")))
        both = secrets.Keyring((old.keys if old else []) + new.keys, "the old and new keys")
        try:
            count = secrets.reencrypt(data, secret_fields(types), both, new)
        except secrets.InvalidToken:
            if key_path is not None and old is not None:
                secrets.write_keys(key_path, old.keys)
            raise secrets.SecretKeyError(f"a secret in {path} cannot be decrypted with the key from "
                                         f"{old.source if old else 'nowhere'}; nothing was changed") from None
        config_mod.validate_data(data, types, pm, settings, source=str(path), agents=agents)
        write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        if key_path is not None:
            secrets.write_keys(key_path, [new.keys[0]])
        return count, new.source
