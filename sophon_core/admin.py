"""The admin token and the guard in front of the admin API and the dashboard's data.

The token is ``SOPHON_ADMIN_TOKEN`` or, when that is unset, the content of
``$SOPHON_DATA_DIR/admin.token`` (created with mode 0600 at first start; the
CLI prints it once, ``sophon admin-token`` shows it again). Clients send it as
``Authorization: Bearer <token>``. There is no cookie: a page on another site
cannot make a browser send the header, so cross-site requests change nothing.
"""
from __future__ import annotations

import hmac
import secrets as _random
from pathlib import Path
from urllib.parse import urlsplit

import falcon

from .errors import SophonError
from .files import create_private
from .settings import Settings

ENV = "SOPHON_ADMIN_TOKEN"


class AdminTokenError(SophonError):
    """The token file cannot be read or made."""


def token_file(settings: Settings) -> Path:
    return settings.data_dir / "admin.token"


def ensure_token(settings: Settings) -> tuple[str, bool]:
    """The admin token; made (and stored 0600) when there is none. :return: (token, made now).

    The file appears with its content already in it (written beside it, then
    hard-linked into place), so a worker racing another never reads it empty.
    :raises AdminTokenError: the file cannot be read or made, or it is empty.
    """
    token = (settings.env.get(ENV) or "").strip()
    if token:
        return token, False
    path = token_file(settings)
    existing = _read(path)
    if existing is not None:
        return existing, False
    made = _random.token_urlsafe(32)
    try:
        if not create_private(path, made + "\n"):  # another process made it first: use theirs
            existing = _read(path)
            assert existing is not None
            return existing, False
    except OSError as exc:
        raise AdminTokenError(f"cannot create the admin token file {path}: {exc.strerror}") from None
    return made, True


def _read(path: Path) -> str | None:
    """The token in ``path``; ``None`` when there is no file."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AdminTokenError(f"cannot read the admin token file {path}: {exc.strerror}") from None
    if not text:
        raise AdminTokenError(f"the admin token file {path} is empty; delete it (a new token is made at the "
                              f"next start) or set {ENV}")
    return text


class AdminGuard:
    """Falcon middleware: resources with ``admin = True`` need the bearer token;
    state-changing requests must also come from this origin (the ``Host`` the request
    names, or ``SOPHON_PUBLIC_URL``'s host) when a browser says where they come from."""

    def __init__(self, token: str, public_url: str | None = None):
        if not token.strip():
            raise AdminTokenError("the admin token is empty")
        self._token = token.strip().encode()
        # Behind a proxy that rewrites Host, the browser's Origin is the public host.
        self._public_host = urlsplit(public_url).netloc.lower() if public_url else None

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        if not getattr(resource, "admin", False) or req.method == "OPTIONS":
            return
        header = req.get_header("Authorization") or ""
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
            raise falcon.HTTPUnauthorized(
                title="admin token required",
                description="send 'Authorization: Bearer <token>'; the token is SOPHON_ADMIN_TOKEN or the "
                            "content of admin.token in SOPHON_DATA_DIR (`sophon admin-token` prints it)",
                challenges=["Bearer"])
        origin = req.get_header("Origin")
        if req.method not in ("GET", "HEAD") and origin and origin != "null":
            if urlsplit(origin).netloc.lower() not in (req.netloc.lower(), self._public_host):
                raise falcon.HTTPForbidden(title="cross-origin request refused",
                                           description=f"requests that change channels must come from "
                                                       f"this server's own pages, not {origin}")
