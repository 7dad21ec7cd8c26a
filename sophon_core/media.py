"""Files in messages, for every channel that carries them.

Inbound: the pipeline fetches each file a sender attached (the channel's
``fetch_attachment`` hook) and keeps it under ``SOPHON_DATA_DIR/media/in/`` for the
agent. Outbound: each file an agent returns is copied to ``media/out/<id>`` (with
``<id>.json``: content type, size, file name), and the channel's ``send`` gets a URL
``<public base>/media/<id>?expires=<unix time>&signature=<HMAC>`` that the provider
fetches. The URL is valid for ``SOPHON_MEDIA_URL_TTL`` seconds (default 600); the HMAC
key is ``media.key`` (0600) in the data folder, shared by every worker. Kept files are
deleted after ``SOPHON_MEDIA_RETENTION_DAYS`` (default 30).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import mimetypes
import re
import os
import secrets
import time
from pathlib import Path
from urllib.parse import urlencode

import falcon

from .files import create_private, write_atomic
from .models import Attachment, Channel, ChannelType
from .settings import Settings

ROUTE = "/media/{name}"
_NAME = re.compile(r"^[0-9a-f]{32}$")


def public_base(channel: Channel, ct: ChannelType | None, settings: Settings | None) -> str | None:
    """The base URL providers reach this server at: the channel's own (the type's
    ``public_url_field``), else ``SOPHON_PUBLIC_URL``; None when neither is set."""
    base = channel.config.get(ct.public_url_field) if ct is not None and ct.public_url_field else None
    if not (isinstance(base, str) and base):
        base = settings.public_url if settings is not None else None
    return base.rstrip("/") if base else None


class MediaFiles:
    """The media folder of one data directory."""

    def __init__(self, data_dir: Path, ttl: float = 600.0):
        self.root = Path(data_dir) / "media"
        self.ttl = ttl
        self._key: bytes | None = None

    # --- keys and URLs ---------------------------------------------------------------

    def _signing_key(self) -> bytes:
        if self._key is None:
            path = self.root.parent / "media.key"
            create_private(path, secrets.token_hex(32))  # no-op when another worker made it
            text = path.read_text().strip()
            if not text:
                raise RuntimeError(f"{path} is empty; delete it and restart (a new key is made)")
            self._key = text.encode()
        return self._key

    def _signature(self, name: str, expires: int) -> str:
        return hmac.new(self._signing_key(), f"{name}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def signed_url(self, base: str, name: str, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + self.ttl)
        query = urlencode({"expires": expires, "signature": self._signature(name, expires)})
        return f"{base.rstrip('/')}/media/{name}?{query}"

    def check(self, name: str, expires: str | None, signature: str | None) -> Path:
        """The file a signed URL names. :raises falcon.HTTPError: 404 or 403, in words."""
        if not _NAME.match(name or ""):
            raise falcon.HTTPNotFound(description="no such file")
        try:
            when = int(expires or "")
        except ValueError:
            raise falcon.HTTPForbidden(title="invalid link", description="the link has no valid 'expires'") from None
        if not signature or not hmac.compare_digest(self._signature(name, when), signature):
            raise falcon.HTTPForbidden(title="invalid link", description="the link's signature does not match")
        if when < time.time():
            raise falcon.HTTPForbidden(title="link expired", description="the link has expired")
        path = self.root / "out" / name
        if not path.is_file():
            raise falcon.HTTPNotFound(description="no such file")
        return path

    # --- files -----------------------------------------------------------------------

    def keep_outbound(self, attachment: Attachment) -> dict:
        """Copy an agent's file into the media folder. :return: what a reply part records."""
        data = attachment.read_bytes()
        name = secrets.token_hex(16)
        folder = self.root / "out"
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"id": name, "content_type": attachment.content_type, "size": len(data),
                "filename": attachment.filename or (Path(attachment.path).name if attachment.path else None)}
        _write_bytes(folder / name, data)
        write_atomic(folder / f"{name}.json", json.dumps(meta))
        return meta

    def outbound_meta(self, name: str) -> dict:
        return json.loads((self.root / "out" / f"{name}.json").read_text())

    def keep_inbound(self, channel_id: str, provider_message_id: str, n: int, data: bytes,
                     content_type: str) -> Path:
        """Keep file ``n`` of an inbound message; the same message and ``n`` give the same path."""
        digest = hashlib.sha256(f"{channel_id}\n{provider_message_id}".encode()).hexdigest()[:24]
        ext = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ".bin"
        folder = self.root / "in"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{digest}-{n}{ext}"
        _write_bytes(path, data)
        return path


    def prune(self, older_than: float, now: float | None = None) -> int:
        """Delete kept files (inbound and outbound) last written more than ``older_than``
        seconds ago. :return: how many files were deleted."""
        cutoff = (now if now is not None else time.time()) - older_than
        gone = 0
        for folder in (self.root / "in", self.root / "out"):
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    if entry.is_file() and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        gone += 1
                except FileNotFoundError:  # another worker pruned it first
                    pass
        return gone


def _write_bytes(path: Path, data: bytes) -> None:
    """Whole or not at all, and on disk before the part that names it is recorded."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


class MediaResource:
    """``GET /media/{name}``: an outbound file, for the provider, through a signed URL only."""

    def __init__(self, media: MediaFiles):
        self.media = media

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        path = self.media.check(name, req.get_param("expires"), req.get_param("signature"))
        meta = self.media.outbound_meta(name)
        resp.content_type = meta.get("content_type") or "application/octet-stream"
        resp.cache_control = ["private", "max-age=60"]
        resp.data = path.read_bytes()

    on_head = on_get  # Falcon sends the headers only
