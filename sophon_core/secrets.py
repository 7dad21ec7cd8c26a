"""Secrets at rest: the fields a type's schema marks ``writeOnly`` are stored
encrypted in ``channels.json`` as ``enc:v1:<Fernet token>``.

The key comes from ``SOPHON_SECRET_KEY`` (one or more Fernet keys separated by
commas: the first encrypts, every one decrypts) or else from the key file
``$SOPHON_DATA_DIR/secret.key`` (created with mode 0600 the first time a secret
is encrypted; one key per line, the first encrypts). A plaintext secret in a
hand-edited file is accepted and encrypted the next time Sophon writes the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import SophonError
from .files import create_private, write_atomic
from .settings import Settings

PREFIX = "enc:v1:"
ENV = "SOPHON_SECRET_KEY"


class SecretKeyError(SophonError):
    """No usable key (malformed key, unreadable key file)."""


def is_encrypted(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def key_file(settings: Settings) -> Path:
    return settings.data_dir / "secret.key"


def new_key() -> str:
    return Fernet.generate_key().decode()


class Keyring:
    """The keys in use; ``source`` says where they came from, for error messages."""

    def __init__(self, keys: list[str], source: str):
        if not keys:
            raise SecretKeyError(f"{source} holds no key")
        try:
            self._fernets = [Fernet(k.encode()) for k in keys]
        except (ValueError, TypeError):
            raise SecretKeyError(f"{source} does not hold a valid key: a key is 32 url-safe base64-encoded "
                                 "bytes (make one with `sophon channels rotate-key --print-new-key`)") from None
        self.keys = list(keys)
        self.source = source
        self._multi = MultiFernet(self._fernets)

    @classmethod
    def load(cls, settings: Settings, *, create: bool = False) -> "Keyring | None":
        """The keys from ``SOPHON_SECRET_KEY`` or the key file; ``None`` when there are none
        (unless ``create``: then a new key file is made, mode 0600)."""
        raw = (settings.env.get(ENV) or "").strip()
        if raw:
            return cls([k.strip() for k in raw.split(",") if k.strip()], ENV)
        path = key_file(settings)
        try:
            return cls(_read_keys(path), str(path))
        except FileNotFoundError:
            pass
        if not create:
            return None
        create_private(path, new_key() + "\n")  # or another process made it first: use theirs
        return cls(_read_keys(path), str(path))

    def encrypt(self, plaintext: str) -> str:
        return PREFIX + self._fernets[0].encrypt(plaintext.encode()).decode()

    def decrypt(self, stored: str) -> str:
        """:raises InvalidToken: no key of this keyring encrypted ``stored``."""
        return self._multi.decrypt(stored[len(PREFIX):].encode()).decode()


def _read_keys(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SecretKeyError(f"cannot read the key file {path}: {exc.strerror}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def write_keys(path: Path, keys: list[str]) -> None:
    """Replace the key file atomically, mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(k + "\n" for k in keys), mode=0o600)


def secret_values(data: Any, secret_fields: Mapping[str, frozenset[str]]) -> Iterator[tuple[dict, str, str]]:
    """``(config, field, value)`` for every secret string in parsed channels.json data.

    :param secret_fields: type name -> the secret field names of that type.
    """
    for item in (data.get("channels") if isinstance(data, dict) else None) or ():
        if not isinstance(item, dict) or not isinstance(item.get("config"), dict):
            continue
        for name in secret_fields.get(item.get("type"), ()):  # type: ignore[arg-type]
            value = item["config"].get(name)
            if isinstance(value, str):
                yield item["config"], name, value


def encrypt_plaintext(data: Any, secret_fields: Mapping[str, frozenset[str]], settings: Settings) -> int:
    """Encrypt, in place, every secret still in plain text. :return: how many."""
    todo = [(cfg, name, value) for cfg, name, value in secret_values(data, secret_fields)
            if not is_encrypted(value)]
    if not todo:
        return 0
    ring = Keyring.load(settings, create=True)
    assert ring is not None
    for cfg, name, value in todo:
        cfg[name] = ring.encrypt(value)
    return len(todo)


def reencrypt(data: Any, secret_fields: Mapping[str, frozenset[str]], old: Keyring, new: Keyring) -> int:
    """Re-encrypt, in place, every secret under ``new``'s first key. :return: how many.

    :raises InvalidToken: a secret that ``old`` cannot decrypt (nothing is changed then).
    """
    plan = []
    for cfg, name, value in secret_values(data, secret_fields):
        plain = old.decrypt(value) if is_encrypted(value) else value
        plan.append((cfg, name, plain))
    for cfg, name, plain in plan:
        cfg[name] = new.encrypt(plain)
    return len(plan)


__all__ = ["PREFIX", "ENV", "Keyring", "SecretKeyError", "InvalidToken", "is_encrypted", "key_file",
           "new_key", "write_keys", "secret_values", "encrypt_plaintext", "reencrypt"]
