"""Fetching the files people send, safely: Twilio's hosts only, bounded size, count and type.

Twilio's ``MediaUrl{N}`` is ``https://api.twilio.com/2010-04-01/Accounts/AC.../Messages/
MM.../Media/ME...``; a GET with the account's credentials answers with a redirect to
Twilio's media CDN (``*.twiliocdn.com``). So:

- the URL in the webhook must be ``https://api.twilio.com`` (or another ``*.twilio.com``
  host) of this channel's account; it is the only request that carries credentials;
- each redirect (at most 3) must stay on ``*.twilio.com`` / ``*.twiliocdn.com`` over
  https and is fetched without credentials; any other host, scheme or port is refused
  (no server-side request forgery through a crafted webhook or redirect);
- at most 25 MB per file, read in chunks and cut off beyond it; the served
  ``Content-Type`` must be the one the webhook declared and a type WhatsApp carries.

With ``SOPHON_TWILIO_API_URL`` set (the local sandbox), that origin replaces every
Twilio host above.
"""
from __future__ import annotations

from typing import Mapping
from urllib.parse import urljoin, urlsplit

import requests

from sophon_core.errors import AttachmentError
from sophon_core.models import Attachment, Channel
from sophon_sms_twilio.client import TWILIO_API, api_base

MAX_FILES = 10
MAX_BYTES = 25 * 1024 * 1024
MAX_REDIRECTS = 3
TIMEOUT = (5.0, 30.0)  # connect, read (between bytes)
CHUNK = 64 * 1024

# What WhatsApp carries: pictures, stickers, voice notes and audio, video, documents, contacts.
_TYPE_PREFIXES = ("image/", "audio/", "video/")
_DOCUMENT_TYPES = frozenset({
    "application/pdf", "application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "text/plain", "text/csv", "text/vcard", "text/x-vcard",
})
_REFUSED_IMAGES = frozenset({"image/svg+xml"})  # a script carrier, never a WhatsApp picture


def _base_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def media_type_refusal(content_type: str) -> str | None:
    """Why a file of this type is not accepted, or None when it is."""
    ctype = _base_type(content_type)
    if ctype in _DOCUMENT_TYPES or (ctype.startswith(_TYPE_PREFIXES) and ctype not in _REFUSED_IMAGES):
        return None
    return f"files of type {ctype or 'unknown'} are not accepted (pictures, audio, video, PDF and office documents are)"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _on_twilio(url: str, env: Mapping[str, str], *, cdn: bool) -> bool:
    """Is ``url`` on a host we may fetch from? ``cdn``: also Twilio's media CDN (redirects only)."""
    base = api_base(env)
    if base != TWILIO_API:  # the local sandbox (or a test double): its origin only
        return _origin(url) == _origin(base)
    scheme, host, port = _origin(url)
    suffixes = (".twilio.com", ".twiliocdn.com") if cdn else (".twilio.com",)
    return scheme == "https" and port == 443 and (host == "api.twilio.com" or host.endswith(suffixes))


def fetch(channel: Channel, attachment: Attachment, env: Mapping[str, str],
          session: requests.Session | None = None) -> bytes:
    """The file's bytes. :raises AttachmentError: in words, never with credentials."""
    url = attachment.url or ""
    refusal = media_type_refusal(attachment.content_type)
    if refusal:
        raise AttachmentError(refusal)
    if not _on_twilio(url, env, cdn=False):
        raise AttachmentError(f"not fetched: {_where(url)} is not a Twilio media host")
    account = channel.config["accountSid"]
    if f"/Accounts/{account}/" not in urlsplit(url).path:
        raise AttachmentError("not fetched: the file's URL is not under this channel's Twilio account")
    http = session or requests.Session()
    http.trust_env = False  # no proxy from the environment: the request goes to Twilio or nowhere
    auth = (account, channel.config["authToken"])
    try:
        for hop in range(MAX_REDIRECTS + 1):
            with http.get(url, auth=auth if hop == 0 else None, allow_redirects=False, stream=True,
                          timeout=TIMEOUT) as resp:
                if resp.is_redirect:
                    target = urljoin(url, resp.headers.get("Location", ""))
                    if not _on_twilio(target, env, cdn=True):
                        raise AttachmentError(f"not fetched: Twilio's answer redirected to {_where(target)}, "
                                              "which is not a Twilio media host")
                    url = target
                    continue
                if resp.status_code in (401, 403):
                    raise AttachmentError(f"Twilio refused the download (HTTP {resp.status_code}): check the "
                                          "channel's Auth Token")
                if resp.status_code != 200:
                    raise AttachmentError(f"Twilio answered HTTP {resp.status_code} for the file")
                return _body(resp, attachment.content_type)
        raise AttachmentError(f"not fetched: more than {MAX_REDIRECTS} redirects")
    except requests.RequestException as exc:
        raise AttachmentError(f"could not download the file from Twilio ({type(exc).__name__})") from None
    finally:
        if session is None:
            http.close()


def _body(resp: requests.Response, declared: str) -> bytes:
    served = _base_type(resp.headers.get("Content-Type", ""))
    if served != _base_type(declared):
        raise AttachmentError(f"refused: the file was declared {_base_type(declared)} but served as "
                              f"{served or 'no type'}")
    try:
        length = int(resp.headers.get("Content-Length") or 0)
    except ValueError:
        length = 0
    if length > MAX_BYTES:
        raise AttachmentError(f"refused: larger than {MAX_BYTES // (1024 * 1024)} MB ({length} bytes)")
    data = bytearray()
    for chunk in resp.iter_content(CHUNK):
        data += chunk
        if len(data) > MAX_BYTES:
            raise AttachmentError(f"refused: larger than {MAX_BYTES // (1024 * 1024)} MB")
    return bytes(data)


def _where(url: str) -> str:
    """Scheme, host and port of a URL, for messages (never its query, which may be signed)."""
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}:{port}" if host else repr(url[:60])
