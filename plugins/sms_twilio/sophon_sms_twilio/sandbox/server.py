"""A local Twilio: the slice of the REST API v2010 the SMS channel uses, plus a phone.

The :class:`Sandbox` is a real HTTP server (standard library only) that answers
``/2010-04-01/...`` with the same status codes, JSON bodies and error bodies as
api.twilio.com, and whose :meth:`Sandbox.send_inbound` posts correctly signed inbound-SMS
webhooks, the way Twilio does, to the application under test.

It stands alone: it imports nothing from ``sophon_core``; from ``twilio`` it only takes the
webhook signer (and the REST client, lazily, in :meth:`Sandbox.twilio_client`).

WhatsApp (Twilio's WhatsApp channel: the same Messages API, with ``whatsapp:+E164`` addresses):

* ``add_number(..., whatsapp=True)`` makes a number a WhatsApp sender; its ``sms_url`` is the
  sender's "A message comes in" webhook. ``send_inbound(from_="whatsapp:+1555...",
  to="whatsapp:+1500...", profile_name=..., media_files=[(bytes, type)])`` posts Twilio's
  signed WhatsApp form (ProfileName, WaId, one media at most) and opens the 24-hour window.
* :meth:`Sandbox.add_media` hosts inbound media at a Twilio media URL: GET needs HTTP Basic auth
  of the account and answers 307 to ``/_media/<token>`` (the "CDN", no auth), which serves the
  bytes. Both GETs are recorded in :meth:`Sandbox.requests` (never a password).
* ``POST Messages.json`` with a ``whatsapp:`` From/To is checked like Twilio (63007, 21211,
  21602, 21617, 21623), answered 201 queued, then settled by a background thread: outside the
  24-hour window -> failed 63016 (a ``ContentSid`` template is exempt); else the MediaUrl are
  fetched (plain GET, no redirects; only the first is delivered) -> failed 63019 / 63021 /
  11751, or sent then delivered. :meth:`Sandbox.wait_for_status` waits for that; with a
  StatusCallback each change is POSTed, signed, and recorded in :meth:`Sandbox.callbacks`.
* The window, per (user, sender): :meth:`Sandbox.open_window` / :meth:`Sandbox.close_window`.
  The window is read when the message is created.
* The sandbox never reaches the internet: it fetches media and posts status callbacks only to
  loopback hosts (and its own host); any other URL is recorded as not reached (media: 63019).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Sequence

from twilio.request_validator import RequestValidator

from ..segments import count_segments

__all__ = [
    "API_VERSION",
    "DEMO_ACCOUNT_SID",
    "DEMO_AUTH_TOKEN",
    "DEMO_NUMBER",
    "DEMO_PEER",
    "DEMO_SPARE_NUMBER",
    "DEMO_WHATSAPP_NUMBER",
    "Account",
    "Number",
    "Sandbox",
    "demo_sandbox",
    "main",
]

log = logging.getLogger("sophon_sms_twilio.sandbox")

API_VERSION = "2010-04-01"

# Fixed, obviously fake demo credentials: they only ever open this sandbox.
DEMO_ACCOUNT_SID = "AC" + "5a" * 16
DEMO_AUTH_TOKEN = "sandbox" + "0" * 25
# Twilio's own magic test "From" number, and the simulated handset's number.
DEMO_NUMBER = "+15005550006"
DEMO_PEER = "+15551230001"
# A second number on the demo account that no channel uses yet: for trying Add Channel.
DEMO_SPARE_NUMBER = "+15005550010"

# A WhatsApp sender on the demo account (its webhook: demo_sandbox(whatsapp_url=...)).
DEMO_WHATSAPP_NUMBER = "+15005550020"

WEBHOOK_TIMEOUT = 10.0  # seconds the phone waits for the application's webhook
CALLBACK_TIMEOUT = 10.0  # seconds a status callback waits for the application
MEDIA_FETCH_TIMEOUT = 10.0  # seconds (in all) Twilio spends fetching one outbound MediaUrl

WHATSAPP_PREFIX = "whatsapp:"
WHATSAPP_WINDOW = 24 * 3600  # seconds after the user's last message that free-form replies may go
WHATSAPP_MAX_MEDIA_BYTES = 16 * 1024 * 1024
WHATSAPP_MAX_IMAGE_BYTES = 5 * 1024 * 1024
# Content types WhatsApp takes (besides audio/* and application/vnd.*).
_WHATSAPP_TYPES = frozenset({
    "image/jpeg", "image/png", "image/webp", "video/mp4", "video/3gpp", "application/pdf", "text/plain",
    "text/vcard", "application/msword",
})
# Twilio's asynchronous WhatsApp failures: error code -> error message.
_WA_OUTSIDE_WINDOW = (63016, "Outside messaging window. For WhatsApp, use a Message Template instead")
_WA_MEDIA_DOWNLOAD = (63019, "Media failed to download")
_WA_MEDIA_TYPE = (63021, "Channel invalid content error")
_WA_MEDIA_SIZE = (11751, "Media exceeds messaging provider size limit")

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")
_ACCOUNT_PATH = re.compile(r"^/2010-04-01/Accounts/([^/]+?)(?:\.json$|/)")
_MESSAGE_SID = re.compile(r"^(SM|MM)[0-9a-fA-F]{32}$")
_MEDIA_PATH = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages/([^/]+)/Media/([^/.]+)$")
_CDN_PREFIX = "/_media/"

# Twilio's default opt-out / opt-in keywords (always on for long codes).
_STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
_START_WORDS = frozenset({"START", "YES", "UNSTOP"})

_TOLL_FREE_AREA_CODES = frozenset({"800", "833", "844", "855", "866", "877", "888"})
_COUNTRY_CODES = {
    "1": "US", "7": "RU", "20": "EG", "27": "ZA", "30": "GR", "31": "NL", "32": "BE",
    "33": "FR", "34": "ES", "36": "HU", "39": "IT", "40": "RO", "41": "CH", "43": "AT",
    "44": "GB", "45": "DK", "46": "SE", "47": "NO", "48": "PL", "49": "DE", "51": "PE",
    "52": "MX", "54": "AR", "55": "BR", "56": "CL", "57": "CO", "60": "MY", "61": "AU",
    "62": "ID", "63": "PH", "64": "NZ", "65": "SG", "66": "TH", "81": "JP", "82": "KR",
    "84": "VN", "86": "CN", "90": "TR", "91": "IN", "92": "PK", "234": "NG", "254": "KE",
    "351": "PT", "353": "IE", "358": "FI", "420": "CZ", "852": "HK", "886": "TW",
    "971": "AE", "972": "IL",
}

# Default Twilio error code and message for an injected status.
_DEFAULT_ERRORS = {
    400: (20001, "Bad Request"),
    401: (20003, "Authenticate"),
    403: (20403, "Forbidden"),
    404: (20404, "The requested resource was not found"),
    405: (20004, "Method not allowed"),
    429: (20429, "Too Many Requests"),
    500: (20500, "Internal Server Error"),
    503: (20503, "Service unavailable"),
}

# Methods api.twilio.com itself allows on the paths the sandbox serves (a method Twilio
# allows but the sandbox does not implement answers 404, any other 405).
_TWILIO_METHODS = {
    "account": {"GET", "POST"},
    "incoming_phone_numbers": {"GET", "POST"},
    "messages": {"GET", "POST"},
}

_ACCOUNT_SUBRESOURCES = {
    "addresses": "Addresses.json",
    "conferences": "Conferences.json",
    "signing_keys": "SigningKeys.json",
    "transcriptions": "Transcriptions.json",
    "connect_apps": "ConnectApps.json",
    "sip": "SIP.json",
    "authorized_connect_apps": "AuthorizedConnectApps.json",
    "usage": "Usage.json",
    "keys": "Keys.json",
    "applications": "Applications.json",
    "recordings": "Recordings.json",
    "short_codes": "SMS/ShortCodes.json",
    "calls": "Calls.json",
    "notifications": "Notifications.json",
    "incoming_phone_numbers": "IncomingPhoneNumbers.json",
    "queues": "Queues.json",
    "messages": "Messages.json",
    "outgoing_caller_ids": "OutgoingCallerIds.json",
    "available_phone_numbers": "AvailablePhoneNumbers.json",
    "balance": "Balance.json",
}


def _rfc2822(moment: datetime) -> str:
    """``Thu, 30 Jul 2015 20:00:00 +0000``, as Twilio writes every date."""
    return format_datetime(moment.astimezone(timezone.utc))


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _country_code(e164: str) -> str:
    digits = e164.lstrip("+")
    for length in (3, 2, 1):
        if digits[:length] in _COUNTRY_CODES:
            return _COUNTRY_CODES[digits[:length]]
    return ""


def _friendly_phone(e164: str) -> str:
    """``+15005550006`` -> ``(500) 555-0006`` (NANP numbers); other numbers unchanged."""
    if re.fullmatch(r"\+1\d{10}", e164):
        d = e164[2:]
        return f"({d[:3]}) {d[3:6]}-{d[6:]}"
    return e164


def _error_body(status: int, code: int, message: str) -> dict:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _default_error(status: int) -> tuple[int, str]:
    """Twilio's error code and message for a bare HTTP error status."""
    if status in _DEFAULT_ERRORS:
        return _DEFAULT_ERRORS[status]
    try:
        return status, HTTPStatus(status).phrase
    except ValueError:
        return status, "Error"


def _at_least(n: int, items: list) -> list | None:
    """``items`` when there are ``n`` or more, else None (what ``Sandbox._wait`` polls for)."""
    return items if len(items) >= n else None


def _last_values(multi: dict[str, list[str]]) -> dict[str, str]:
    return {key: values[-1] for key, values in multi.items() if values}


def _parse_form(raw: str) -> dict[str, list[str]]:
    multi: dict[str, list[str]] = {}
    for key, value in urllib.parse.parse_qsl(raw, keep_blank_values=True):
        multi.setdefault(key, []).append(value)
    return multi


def _is_whatsapp(address: str | None) -> bool:
    return bool(address) and address.startswith(WHATSAPP_PREFIX)


def _whatsapp_e164(address: str | None) -> str | None:
    """``whatsapp:+15551230001`` -> ``+15551230001``; None when not such an address."""
    if not _is_whatsapp(address):
        return None
    number = address[len(WHATSAPP_PREFIX):]
    return number if E164.match(number) else None


def _bare_e164(address: str) -> str:
    """A user or sender given with or without ``whatsapp:``, as E.164 (ValueError otherwise)."""
    number = address[len(WHATSAPP_PREFIX):] if _is_whatsapp(address) else address
    if not E164.match(number or ""):
        raise ValueError(f"expected an E.164 number, with or without 'whatsapp:', not {address!r}")
    return number


def _mask_number(e164: str) -> str:
    """``+15551230001`` -> ``+1555123XXXX``: how Twilio shows ChannelToAddress."""
    return e164[:-4] + "XXXX" if len(e164) > 5 else e164


def _whatsapp_message_type(content_type: str | None) -> str:
    if not content_type:
        return "text"
    major = content_type.split("/", 1)[0].lower()
    return major if major in ("image", "video", "audio") else "document"


def _whatsapp_type_ok(content_type: str) -> bool:
    return (
        content_type in _WHATSAPP_TYPES
        or content_type.startswith("audio/")
        or content_type.startswith("application/vnd.")
    )


def _media_type(header: str | None) -> str | None:
    """``image/png; charset=x`` -> ``image/png`` (None when there is no Content-Type)."""
    if not header:
        return None
    return header.split(";", 1)[0].strip().lower() or None


def _is_local_url(url: str, also: Iterable[str] = ()) -> bool:
    """Whether ``url`` is http(s) to a loopback host (or one of ``also``): never the internet."""
    try:
        split = urllib.parse.urlsplit(url)
        host = (split.hostname or "").lower()
    except ValueError:
        return False
    if split.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost" or host in {h.strip("[]").lower() for h in also if h}:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _http_exchange(request: urllib.request.Request, target: str, timeout: float, what: str) -> tuple[int, str]:
    """Send ``request`` without following redirects: (status, text), or ConnectionError /
    TimeoutError naming ``what`` (e.g. "the webhook")."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read().decode(
                response.headers.get_content_charset() or "utf-8", "replace"
            )
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(exc.headers.get_content_charset() or "utf-8", "replace") if exc.fp else ""
        return exc.code, text
    except (socket.timeout, TimeoutError) as exc:
        raise TimeoutError(f"{what} {target} did not answer within {timeout:g}s") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise TimeoutError(f"{what} {target} did not answer within {timeout:g}s") from exc
        raise ConnectionError(f"could not deliver {what} to {target}: {reason}") from exc


class SandboxError(ValueError):
    """A request the sandbox cannot carry out (unknown number, no sms_url, bad control call)."""


@dataclass
class Account:
    """A sandbox Twilio account. ``auth_token`` is kept out of ``repr``."""

    sid: str
    auth_token: str = field(repr=False)
    type: str = "Full"
    status: str = "active"
    friendly_name: str = "Sophon sandbox"
    date_created: datetime = field(default_factory=_now)
    verified_caller_ids: set = field(default_factory=set)

    @property
    def uri(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.sid}.json"

    def to_json(self) -> dict:
        """The ``api.v2010.account`` resource (which, like Twilio's, carries auth_token)."""
        base = f"/{API_VERSION}/Accounts/{self.sid}"
        return {
            "auth_token": self.auth_token,
            "date_created": _rfc2822(self.date_created),
            "date_updated": _rfc2822(self.date_created),
            "friendly_name": self.friendly_name,
            "owner_account_sid": self.sid,
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {k: f"{base}/{v}" for k, v in _ACCOUNT_SUBRESOURCES.items()},
            "type": self.type,
            "uri": self.uri,
        }


@dataclass
class Number:
    """A phone number owned by a sandbox account (an IncomingPhoneNumber)."""

    sid: str
    account_sid: str
    phone_number: str
    friendly_name: str
    sms_url: str | None = None
    sms_method: str = "POST"
    capabilities: dict = field(default_factory=dict)
    date_created: datetime = field(default_factory=_now)
    # A WhatsApp sender (not part of the IncomingPhoneNumber resource: Twilio has no such flag).
    whatsapp: bool = False

    @property
    def uri(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/IncomingPhoneNumbers/{self.sid}.json"

    def to_json(self) -> dict:
        """The ``api.v2010.account.incoming_phone_number`` resource."""
        toll_free = self.phone_number.startswith("+1") and self.phone_number[2:5] in _TOLL_FREE_AREA_CODES
        return {
            "account_sid": self.account_sid,
            "address_requirements": "none",
            "address_sid": None,
            "api_version": API_VERSION,
            "beta": False,
            "capabilities": dict(self.capabilities),
            "date_created": _rfc2822(self.date_created),
            "date_updated": _rfc2822(self.date_created),
            "emergency_status": "Inactive",
            "emergency_address_sid": None,
            "emergency_address_status": "unregistered",
            "friendly_name": self.friendly_name,
            "identity_sid": None,
            "origin": "twilio",
            "phone_number": self.phone_number,
            "sid": self.sid,
            "sms_application_sid": None,
            "sms_fallback_method": "POST",
            "sms_fallback_url": None,
            "sms_method": self.sms_method,
            "sms_url": self.sms_url,
            "status_callback": None,
            "status_callback_method": "POST",
            "trunk_sid": None,
            "uri": self.uri,
            "voice_application_sid": None,
            "voice_caller_id_lookup": False,
            "voice_fallback_method": "POST",
            "voice_fallback_url": None,
            "voice_method": "POST",
            "voice_url": None,
            "bundle_sid": None,
            "voice_receive_mode": "voice",
            "status": "in-use",
            "type": "toll-free" if toll_free else "local",
        }


@dataclass
class _Fault:
    method: str
    path_suffix: str
    status: int | None
    code: int | None
    message: str | None
    times: int
    delay: float
    retry_after: Any
    reset: bool

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and path.endswith(self.path_suffix)


class _Reply(Exception):
    """Internal: unwinds a REST handler into a Twilio error response."""

    def __init__(self, status: int, code: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class _Redirect(Exception):
    """Internal: a REST handler answers 307 (a media URL sending the client to the CDN)."""

    def __init__(self, location: str, media_sid: str):
        super().__init__(location)
        self.location, self.media_sid = location, media_sid


@dataclass
class _Media:
    """A media file the sandbox hosts for an inbound message (see Sandbox.add_media)."""

    sid: str
    account_sid: str
    message_sid: str
    content: bytes = field(repr=False)
    content_type: str
    served_type: str | None
    redirect_to: str | None
    token: str = field(repr=False)
    date_created: datetime = field(default_factory=_now)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The phone reports a webhook's redirect as its answer instead of following it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, sandbox: "Sandbox"):
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.sandbox = sandbox
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """A client that hung up (it timed out, or the sandbox stopped) is not an error."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError, OSError)):
            log.debug("client %s went away: %s", client_address, error)
        else:
            log.exception("sandbox failed on a request from %s", client_address)

    def drop_connections(self) -> None:
        """Hang up idle keep-alive connections so their threads end with the server."""
        with self._open_lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Sophon-Twilio-Sandbox/1.0"
    timeout = 30  # an idle keep-alive connection is dropped after this long
    server: _Server

    # -- plumbing ---------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # request lines only, never auth
        log.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, payload: Any, headers: dict | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Twilio-Request-Id", _sid("RQ"))
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_raw(self, status: int, data: bytes, content_type: str | None, headers: dict | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _cdn(self, sandbox: "Sandbox", path: str, raw_query: str) -> None:
        """``/_media/<token>``: the media CDN a media URL redirects to. No auth needed."""
        user, _ = self._basic_auth()
        record = {
            "method": self.command,
            "path": path,
            "query": _last_values(_parse_form(raw_query)),
            "form": {},
            "form_multi": {},
            "status": None,
            "auth_user": user,
            "received_at": time.time(),
            "cdn": True,
            "authorization": "Authorization" in self.headers,  # whether the client sent one
        }
        media = sandbox._media_by_token(path[len(_CDN_PREFIX):])
        if media is not None:
            record["media_sid"] = media.sid
        if self.command not in ("GET", "HEAD"):
            record["status"] = 405
            sandbox._record_request(record)
            self._send_raw(405, b"Method Not Allowed", "text/plain", {"Allow": "GET, HEAD"})
        elif media is None:
            record["status"] = 404
            sandbox._record_request(record)
            self._send_raw(404, b"Not Found", "text/plain")
        else:
            record["status"] = 200
            sandbox._record_request(record)
            self._send_raw(200, media.content, media.served_type or media.content_type)

    def _basic_auth(self) -> tuple[str | None, str | None]:
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            return None, None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else (user, None)

    def _reset_connection(self) -> None:
        """Drop the TCP connection with an RST, without answering."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            self.connection.close()
        except OSError:
            pass

    # -- routing ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        sandbox = self.server.sandbox
        split = urllib.parse.urlsplit(self.path)
        path = split.path
        body = self._read_body()
        if path == "/_sandbox" or path.startswith("/_sandbox/"):
            self._control(sandbox, path, split.query, body)
            return
        if path.startswith(_CDN_PREFIX):
            self._cdn(sandbox, path, split.query)
            return

        query = _parse_form(split.query)
        content_type = self.headers.get("Content-Type", "")
        form = _parse_form(body.decode("utf-8", "replace")) if (
            body and "application/x-www-form-urlencoded" in content_type.lower()
        ) else {}
        user, password = self._basic_auth()
        record = {
            "method": self.command,
            "path": path,
            "query": _last_values(query),
            "form": _last_values(form),
            "form_multi": copy.deepcopy(form),
            "status": None,
            "auth_user": user,
            "received_at": time.time(),
        }

        fault = sandbox._take_fault(self.command, path)
        if fault is not None:
            if fault.delay > 0:
                time.sleep(fault.delay)
            if fault.reset:
                record["status"] = None
                record["injected"] = "reset"
                sandbox._record_request(record)
                self._reset_connection()
                return
            if fault.status is not None:
                default_code, default_message = _default_error(fault.status)
                code = default_code if fault.code is None else fault.code
                message = default_message if fault.message is None else fault.message
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                if fault.status == 401:
                    headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
                record["status"] = fault.status
                record["injected"] = "error"
                sandbox._record_request(record)
                self._send(fault.status, _error_body(fault.status, code, message), headers)
                return
            record["injected"] = "delay"

        try:
            status, payload = self._rest(sandbox, path, query, form, user, password)
            headers: dict = {}
        except _Reply as reply:
            status, payload, headers = reply.status, _error_body(reply.status, reply.code, reply.message), reply.headers
        except _Redirect as redirect:  # a media URL: off to the CDN
            record["status"] = 307
            record["media_sid"] = redirect.media_sid
            sandbox._record_request(record)
            self._send_raw(307, b"", None, {"Location": redirect.location})
            return
        except Exception:  # pragma: no cover - a sandbox bug must still answer like Twilio
            log.exception("sandbox failed on %s %s", self.command, path)
            status, payload, headers = 500, _error_body(500, 20500, "Internal Server Error"), {}
        record["status"] = status
        created = status == 201 and path.endswith("/Messages.json")
        sandbox._record_request(record, message=payload if created else None)
        try:
            self._send(status, payload, headers)
        finally:
            if created:  # a WhatsApp message settles after the client has its 201
                sandbox._start_job(payload["sid"])

    def _rest(self, sandbox: "Sandbox", path: str, query: dict, form: dict, user, password) -> tuple[int, dict]:
        account = sandbox._authenticate(user, password)
        if account is None:
            raise _Reply(401, 20003, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'})
        in_path = _ACCOUNT_PATH.match(path)
        if in_path and in_path.group(1) != account.sid:
            raise _Reply(401, 20003, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'})

        base = f"/{API_VERSION}/Accounts/{account.sid}"
        routes = {
            f"{base}.json": "account",
            f"{base}/IncomingPhoneNumbers.json": "incoming_phone_numbers",
            f"{base}/Messages.json": "messages",
        }
        resource = routes.get(path)
        method = self.command
        if resource is None:
            media = _MEDIA_PATH.match(path)
            if media and media.group(1) == account.sid:
                if method in ("GET", "HEAD"):
                    location, media_sid = sandbox._media_location(account.sid, media.group(2), media.group(3))
                    if location is not None:
                        raise _Redirect(location, media_sid)
                elif method not in ("DELETE",):  # DELETE is real on Twilio, not simulated here
                    raise _Reply(405, 20004, "Method not allowed")
            raise _Reply(404, 20404, f"The requested resource {path} was not found")
        if resource == "account" and method == "GET":
            return 200, account.to_json()
        if resource == "incoming_phone_numbers" and method == "GET":
            return 200, sandbox._list_numbers(account, path, query)
        if resource == "messages" and method == "POST":
            return 201, sandbox._create_message(account, form)
        if method in _TWILIO_METHODS[resource]:  # real on Twilio, not simulated here
            raise _Reply(404, 20404, f"The requested resource {path} was not found")
        raise _Reply(405, 20004, "Method not allowed")

    # -- control API (/_sandbox/...) ----------------------------------------------------

    def _control(self, sandbox: "Sandbox", path: str, raw_query: str, body: bytes) -> None:
        try:
            client_is_loopback = ipaddress.ip_address(self.client_address[0].split("%")[0]).is_loopback
        except ValueError:
            client_is_loopback = False
        if not client_is_loopback:
            self._send(403, {"error": "the sandbox control API only answers loopback clients"})
            return
        query = _last_values(_parse_form(raw_query))
        try:
            if path == "/_sandbox/inbound" and self.command == "POST":
                try:
                    request = json.loads(body.decode("utf-8") or "{}")
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise SandboxError(f"body must be JSON: {exc}") from None
                if not isinstance(request, dict):
                    raise SandboxError("body must be a JSON object")
                self._send(200, sandbox._control_inbound(request))
            elif path == "/_sandbox/messages" and self.command == "GET":
                try:
                    after = int(query.get("after", "0") or 0)
                except ValueError:
                    raise SandboxError("'after' must be an integer") from None
                messages = [
                    {k: v for k, v in m.items() if k != "auth_user"}
                    for m in sandbox.messages(to=query.get("to") or None)
                    if m["index"] > after
                ]
                self._send(200, {"messages": messages})
            elif path == "/_sandbox/info" and self.command == "GET":
                self._send(200, sandbox._info())
            else:
                self._send(404, {"error": f"no sandbox endpoint {self.command} {path}"})
        except SandboxError as exc:
            self._send(400, {"error": str(exc)})
        except (ConnectionError, TimeoutError) as exc:
            self._send(502, {"error": str(exc)})


class Sandbox:
    """A local stand-in for api.twilio.com plus a phone that texts your webhook.

    >>> with Sandbox() as sb:
    ...     account = sb.add_account(type="Trial")
    ...     sb.add_number(account.sid, "+15005550006", sms_url="http://127.0.0.1:8080/sms")
    ...     client = sb.twilio_client(account.sid)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._accounts: dict[str, Account] = {}
        self._numbers: list[Number] = []
        self._opted_out: set[str] = set()
        self._faults: list[_Fault] = []
        self._messages: list[dict] = []
        self._requests: list[dict] = []
        self._inbound: list[dict] = []
        self._callbacks: list[dict] = []
        self._media: dict[tuple[str, str, str], _Media] = {}
        self._cdn: dict[str, _Media] = {}
        self._windows: dict[tuple[str, str], float] = {}  # (user, sender) -> time of the user's last message
        self._channel_installs: dict[str, str] = {}  # WhatsApp sender -> its ChannelInstallSid (XE...)
        self._jobs: dict[str, dict] = {}  # WhatsApp messages created, not yet settling
        self._workers: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> "Sandbox":
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self.host, self.port), _Handler, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"twilio-sandbox:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # WhatsApp workers stop between steps
        # shutdown() waits for serve_forever's next poll; a connection wakes it at once.
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        wake_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        while stopper.is_alive():
            try:
                socket.create_connection((wake_host, self.port), timeout=0.05).close()
            except OSError:
                pass
            stopper.join(0.01)
        server.drop_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            workers = list(self._workers)
        deadline = time.monotonic() + 2.0
        for worker in workers:  # each step of a worker is bounded; this only waits a little
            worker.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox is not running: call start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"<Sandbox {where} accounts={len(self._accounts)} numbers={len(self._numbers)}>"

    # -- world building ---------------------------------------------------------------

    def add_account(
        self,
        sid: str | None = None,
        auth_token: str | None = None,
        *,
        type: str = "Full",
        status: str = "active",
        friendly_name: str = "Sophon sandbox",
    ) -> Account:
        sid = sid or _sid("AC")
        if not _ACCOUNT_SID.match(sid):
            raise ValueError(f"an Account SID is 'AC' followed by 32 hex digits, not {sid!r}")
        if type not in ("Trial", "Full"):
            raise ValueError(f"account type must be 'Trial' or 'Full', not {type!r}")
        if status not in ("active", "suspended", "closed"):
            raise ValueError(f"account status must be active, suspended or closed, not {status!r}")
        account = Account(
            sid=sid,
            auth_token=auth_token or secrets.token_hex(16),
            type=type,
            status=status,
            friendly_name=friendly_name,
        )
        with self._lock:
            if sid in self._accounts:
                raise ValueError(f"account {sid} already exists")
            self._accounts[sid] = account
        return account

    def add_number(
        self,
        account_sid: str,
        phone_number: str,
        *,
        sms_url: str | None = None,
        sms_method: str = "POST",
        sms: bool = True,
        mms: bool = False,
        voice: bool = True,
        friendly_name: str | None = None,
        whatsapp: bool = False,
    ) -> Number:
        """Give ``account_sid`` a number. ``whatsapp=True`` also makes it a WhatsApp sender
        (``whatsapp:<phone_number>``), whose incoming WhatsApp messages go to ``sms_url``."""
        if not E164.match(phone_number):
            raise ValueError(f"phone numbers are E.164 (+ and up to 15 digits), not {phone_number!r}")
        sms_method = sms_method.upper()
        if sms_method not in ("GET", "POST"):
            raise ValueError(f"sms_method must be GET or POST, not {sms_method!r}")
        with self._lock:
            self._account(account_sid)
            if self._number_by_phone(phone_number) is not None:
                raise ValueError(f"{phone_number} already belongs to a sandbox account")
            number = Number(
                sid=_sid("PN"),
                account_sid=account_sid,
                phone_number=phone_number,
                friendly_name=friendly_name or _friendly_phone(phone_number),
                sms_url=sms_url,
                sms_method=sms_method,
                capabilities={"voice": bool(voice), "sms": bool(sms), "mms": bool(mms), "fax": False},
                whatsapp=bool(whatsapp),
            )
            self._numbers.append(number)
            if number.whatsapp:
                self._channel_installs[phone_number] = _sid("XE")
        return number

    def add_media(
        self,
        account_sid: str,
        message_sid: str,
        content: bytes,
        content_type: str,
        *,
        redirect_to: str | None = None,
        served_type: str | None = None,
    ) -> str:
        """Host ``content`` as a media file of (inbound) message ``message_sid``; return its URL.

        The URL is Twilio's: ``{url}/2010-04-01/Accounts/{AC}/Messages/{MM}/Media/{ME}``. A GET
        needs HTTP Basic auth of ``account_sid`` (else 401, Twilio's error body) and answers
        307 to ``{url}/_media/<token>``, the "CDN", which serves the bytes without auth, as
        ``served_type`` if given (a content type that lies) else ``content_type``.
        ``redirect_to`` makes the 307 point there instead (e.g. at a private address).
        """
        if not isinstance(content, (bytes, bytearray)):
            raise TypeError("media content is bytes")
        if not content_type or "/" not in content_type:
            raise ValueError(f"a content type looks like 'image/jpeg', not {content_type!r}")
        if not _MESSAGE_SID.match(message_sid or ""):
            raise ValueError(f"a Message SID is 'SM' or 'MM' followed by 32 hex digits, not {message_sid!r}")
        base = self.url
        media = _Media(
            sid=_sid("ME"),
            account_sid=account_sid,
            message_sid=message_sid,
            content=bytes(content),
            content_type=content_type,
            served_type=served_type,
            redirect_to=redirect_to,
            token=secrets.token_urlsafe(24),
        )
        with self._lock:
            self._account(account_sid)
            self._media[(account_sid, message_sid, media.sid)] = media
            self._cdn[media.token] = media
        return f"{base}/{API_VERSION}/Accounts/{account_sid}/Messages/{message_sid}/Media/{media.sid}"

    def open_window(self, user: str, sender: str) -> None:
        """``user`` just wrote to the WhatsApp ``sender``: free-form messages may go for 24 h."""
        key = (_bare_e164(user), _bare_e164(sender))
        with self._lock:
            self._windows[key] = time.time()

    def close_window(self, user: str, sender: str) -> None:
        """More than 24 h passed since ``user`` last wrote to ``sender``: only templates go."""
        key = (_bare_e164(user), _bare_e164(sender))
        with self._lock:
            self._windows.pop(key, None)

    def window_open(self, user: str, sender: str) -> bool:
        """Whether ``sender`` may send ``user`` a free-form WhatsApp message now."""
        key = (_bare_e164(user), _bare_e164(sender))
        with self._lock:
            opened = self._windows.get(key)
        return opened is not None and time.time() - opened < WHATSAPP_WINDOW

    def verify_caller_id(self, account_sid: str, phone_number: str) -> None:
        """Let a Trial account text ``phone_number`` (Twilio's Verified Caller IDs)."""
        if not E164.match(phone_number):
            raise ValueError(f"phone numbers are E.164, not {phone_number!r}")
        with self._lock:
            self._account(account_sid).verified_caller_ids.add(phone_number)

    def opt_out(self, phone_number: str) -> None:
        """The recipient replied STOP: every later send to it fails with 21610."""
        with self._lock:
            self._opted_out.add(phone_number)

    def opt_in(self, phone_number: str) -> None:
        """The recipient replied START: sends to it work again."""
        with self._lock:
            self._opted_out.discard(phone_number)

    def inject(
        self,
        *,
        method: str = "POST",
        path_suffix: str = "/Messages.json",
        status: int | None = 500,
        code: int | None = None,
        message: str | None = None,
        times: int = 1,
        delay: float = 0.0,
        retry_after: Any = None,
        reset: bool = False,
    ) -> None:
        """Make the next ``times`` matching REST requests fail.

        Each waits ``delay`` seconds, then either drops the connection (``reset=True``)
        or answers ``status`` with a Twilio error body (``code``/``message`` default to
        Twilio's for that status, e.g. 429 -> 20429 "Too Many Requests") and a
        ``Retry-After`` header when ``retry_after`` is given. ``status=None`` with a
        ``delay`` only slows the request down, then serves it normally. Faults are
        matched in the order injected and come before any other check, auth included.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        if status is not None and not 400 <= status <= 599:
            raise ValueError(f"an injected status is an HTTP error (4xx/5xx), not {status}")
        with self._lock:
            self._faults.append(
                _Fault(method.upper(), path_suffix, status, code, message, times, float(delay), retry_after, reset)
            )

    # -- inspection -------------------------------------------------------------------

    def messages(self, *, to: str | None = None) -> list[dict]:
        """Outbound messages the REST API accepted, in arrival order."""
        with self._lock:
            return [copy.deepcopy(m) for m in self._messages if to is None or m["form"].get("To") == to]

    def requests(self) -> list[dict]:
        """Every REST request received (never with its password / auth token)."""
        with self._lock:
            return copy.deepcopy(self._requests)

    def inbound(self) -> list[dict]:
        """Every webhook the phone sent: url, method, form, and the application's answer."""
        with self._lock:
            return copy.deepcopy(self._inbound)

    def callbacks(self, *, message_sid: str | None = None) -> list[dict]:
        """Every status callback posted (WhatsApp messages): message_sid, url, form, and the
        application's answer (``status``/``body``, or ``error`` when it was not reached)."""
        with self._lock:
            return [
                copy.deepcopy(c) for c in self._callbacks if message_sid is None or c["message_sid"] == message_sid
            ]

    def message(self, sid: str) -> dict:
        """The outbound message ``sid`` (SandboxError when there is none)."""
        with self._lock:
            for m in self._messages:
                if m["sid"] == sid:
                    return copy.deepcopy(m)
        raise SandboxError(f"no outbound message {sid}")

    def _wait(self, timeout: float, check, waited_for):
        """Poll ``check()`` (under the change condition) until it returns something other than
        None, then return that; ``check`` may raise to give up early. After ``timeout``
        seconds raise TimeoutError, naming ``waited_for()`` (what was awaited, what was found)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = check()
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"waited {timeout:g}s for {waited_for()}")
                self._changed.wait(min(remaining, 0.1))

    def wait_for_status(self, sid: str, status: str, timeout: float = 10.0) -> dict:
        """Wait until message ``sid`` has reached ``status`` (now or before); return the message.

        A message that settled (delivered, failed) without ever reaching ``status`` raises
        SandboxError at once; TimeoutError after ``timeout`` seconds otherwise."""

        def check() -> dict | None:
            message = self.message(sid)
            if status in message["statuses"]:
                return message
            if message["status"] in ("delivered", "failed", "undelivered"):
                raise SandboxError(
                    f"message {sid} is {message['status']} (error {message['error_code']}); it never was {status}"
                )
            return None

        return self._wait(timeout, check, lambda: f"message {sid} to be {status}: it is {self.message(sid)['status']}")

    def wait_for_callbacks(self, n: int, *, message_sid: str | None = None, timeout: float = 10.0) -> list[dict]:
        """Wait until at least ``n`` status callbacks (for ``message_sid``) were posted; return them."""

        def waited_for() -> str:
            found = self.callbacks(message_sid=message_sid)
            return (f"{n} status callback(s){' for ' + message_sid if message_sid else ''}, got {len(found)}"
                    + (f" ({', '.join(c['form'].get('MessageStatus', '?') for c in found)})" if found else ""))

        return self._wait(timeout, lambda: _at_least(n, self.callbacks(message_sid=message_sid)), waited_for)

    def wait_for_messages(self, n: int, *, to: str | None = None, timeout: float = 10.0) -> list[dict]:
        """Wait until at least ``n`` outbound messages (to ``to``) arrived; return them all."""

        def waited_for() -> str:
            found = self.messages(to=to)
            seen = ", ".join(f"{m['form'].get('To')}: {m['form'].get('Body', '')[:40]!r}" for m in found)
            return (f"{n} outbound message(s){' to ' + to if to else ''}, got {len(found)}"
                    + (f" ({seen})" if seen else ""))

        return self._wait(timeout, lambda: _at_least(n, self.messages(to=to)), waited_for)

    # -- the phone ----------------------------------------------------------------------

    def send_inbound(
        self,
        *,
        from_: str,
        to: str,
        body: str = "",
        media: Sequence[tuple[str, str]] = (),
        account_sid: str | None = None,
        message_sid: str | None = None,
        extra: dict | None = None,
        signature: str | None = None,
        url: str | None = None,
        media_files: Sequence[tuple[bytes, str]] = (),
        profile_name: str | None = None,
    ) -> tuple[int, str]:
        """Text ``body`` from ``from_`` to the sandbox number ``to``: Twilio's signed webhook.

        Returns the application's (HTTP status, response body). ``extra`` adds or
        overrides form fields (a ``None`` value removes one); ``signature`` replaces the
        X-Twilio-Signature header (``""`` omits it); ``url`` overrides the number's
        sms_url. Raises ConnectionError / TimeoutError when the webhook cannot be reached.

        ``media`` are (url, content type) pairs sent as they are; ``media_files`` are
        (bytes, content type) pairs the sandbox hosts (:meth:`add_media`) and sends the URLs of.
        With ``whatsapp:`` addresses this is a WhatsApp message (Twilio's WhatsApp form, with
        ``profile_name`` as ProfileName; one media at most) and it opens the 24-hour window.
        """
        result = self._deliver_inbound(
            from_=from_, to=to, body=body, media=media, account_sid=account_sid,
            message_sid=message_sid, extra=extra, signature=signature, url=url,
            media_files=media_files, profile_name=profile_name,
        )
        return result["status"], result["body"]

    def inbound_form(
        self,
        *,
        from_: str,
        to: str,
        body: str = "",
        media: Iterable[tuple[str, str]] = (),
        account_sid: str,
        message_sid: str | None = None,
        media_files: Iterable[tuple[bytes, str]] = (),
        profile_name: str | None = None,
    ) -> dict[str, str]:
        """The form Twilio posts for an incoming SMS (or WhatsApp message, when ``from_`` or
        ``to`` is a ``whatsapp:`` address), in Twilio's field order. ``media_files`` are
        hosted with :meth:`add_media` first."""
        media = list(media)
        media_files = list(media_files)
        whatsapp = _is_whatsapp(from_) or _is_whatsapp(to)
        sid = message_sid or _sid("MM" if whatsapp and (media or media_files) else "SM")
        for content, content_type in media_files:
            media.append((self.add_media(account_sid, sid, content, content_type), content_type))
        if whatsapp:
            return self._whatsapp_form(from_, to, body, media, account_sid, sid, profile_name)
        form: dict[str, str] = {
            "ToCountry": _country_code(to),
            "ToState": "",
            "SmsMessageSid": sid,
            "NumMedia": str(len(media)),
            "ToCity": "",
            "FromZip": "",
            "SmsSid": sid,
            "FromState": "",
            "SmsStatus": "received",
            "FromCity": "",
            "Body": body,
            "FromCountry": _country_code(from_),
            "To": to,
            "ToZip": "",
            "NumSegments": str(max(1, count_segments(body))),
            "MessageSid": sid,
            "AccountSid": account_sid,
            "From": from_,
            "ApiVersion": API_VERSION,
        }
        for i, (media_url, content_type) in enumerate(media):
            form[f"MediaContentType{i}"] = content_type
            form[f"MediaUrl{i}"] = media_url
        return form

    def _whatsapp_form(self, from_, to, body, media, account_sid, sid, profile_name) -> dict[str, str]:
        """Twilio's WhatsApp inbound form (as a real one is ordered)."""
        form: dict[str, str] = {}
        for i, (_, content_type) in enumerate(media):
            form[f"MediaContentType{i}"] = content_type
        form.update({
            "SmsMessageSid": sid,
            "NumMedia": str(len(media)),
            "ProfileName": profile_name or "",
            "MessageType": _whatsapp_message_type(media[0][1] if media else None),
            "SmsSid": sid,
            "WaId": (_whatsapp_e164(from_) or from_.split(":")[-1]).lstrip("+"),
            "SmsStatus": "received",
            "Body": body,
            "To": to,
            "NumSegments": "1",
            "ReferralNumMedia": "0",
            "MessageSid": sid,
            "AccountSid": account_sid,
            "From": from_,
        })
        for i, (media_url, _) in enumerate(media):
            form[f"MediaUrl{i}"] = media_url
        form["ApiVersion"] = API_VERSION
        return form

    def _deliver_inbound(
        self, *, from_, to, body, media, account_sid, message_sid, extra, signature, url,
        media_files=(), profile_name=None,
    ) -> dict:
        whatsapp = _is_whatsapp(from_) or _is_whatsapp(to)
        if whatsapp:
            user, sender = _whatsapp_e164(from_), _whatsapp_e164(to)
            if user is None:
                raise SandboxError(f"'from' must be a whatsapp:+E.164 address, not {from_!r}")
            if sender is None:
                raise SandboxError(f"'to' must be a whatsapp:+E.164 address, not {to!r}")
            if len(media) + len(media_files) > 1:
                raise SandboxError("a WhatsApp message carries one media at most: send one message per media")
            phone = sender
        else:
            if not E164.match(from_ or ""):
                raise SandboxError(f"'from' must be an E.164 number, not {from_!r}")
            phone = to
        with self._lock:
            number = self._number_by_phone(phone)
            if whatsapp and number is not None and not number.whatsapp:
                raise SandboxError(f"{phone} is not a WhatsApp sender: add_number(..., whatsapp=True)")
            owner = account_sid or (number.account_sid if number else None)
            if owner is None:
                raise SandboxError(f"{to!r} is not a sandbox number: add_number() it first, or pass account_sid")
            account = self._account(owner)
            target = url or (number.sms_url if number else None)
            if not target:
                raise SandboxError(f"{to} has no sms_url to deliver to: set one in add_number(), or pass url")
            method = number.sms_method if (number is not None and url is None) else "POST"
            if whatsapp:  # the user wrote: the 24-hour window (re)opens, whatever the app answers
                self._windows[(user, sender)] = time.time()
            else:
                word = body.strip().upper()
                if word in _STOP_WORDS:
                    self._opted_out.add(from_)
                elif word in _START_WORDS:
                    self._opted_out.discard(from_)
            messages_before = len(self._messages)

        try:
            form = self.inbound_form(
                from_=from_, to=to, body=body, media=media, account_sid=account.sid, message_sid=message_sid,
                media_files=media_files, profile_name=profile_name,
            )
        except (TypeError, ValueError) as exc:
            raise SandboxError(str(exc)) from None
        for key, value in (extra or {}).items():
            if value is None:
                form.pop(key, None)
            else:
                form[key] = str(value)

        if method == "GET":
            sep = "&" if urllib.parse.urlsplit(target).query else "?"
            target = target + sep + urllib.parse.urlencode(form)
            signed_params: dict[str, str] = {}
            data = None
        else:
            signed_params = form
            data = urllib.parse.urlencode(form).encode("utf-8")
        headers = {
            "User-Agent": "TwilioProxy/1.1",
            "Accept": "*/*",
            "Cache-Control": "max-age=259200",
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
        }
        if data is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if signature is None:
            headers["X-Twilio-Signature"] = RequestValidator(account.auth_token).compute_signature(
                target, signed_params
            )
        elif signature != "":
            headers["X-Twilio-Signature"] = signature

        request = urllib.request.Request(target, data=data, headers=headers, method=method)
        status, text = _http_exchange(request, target, WEBHOOK_TIMEOUT, "the webhook")

        result = {
            "message_sid": form.get("MessageSid"),
            "url": target,
            "method": method,
            "form": form,
            "status": status,
            "body": text,
            "messages_before": messages_before,
        }
        with self._lock:
            self._inbound.append(copy.deepcopy(result))
        return result

    def _control_inbound(self, request: dict) -> dict:
        to = request.get("to")
        if not to:
            with self._lock:
                hooked = [n for n in self._numbers if n.sms_url]
            if len(hooked) != 1:
                raise SandboxError("'to' is required when the sandbox has other than one number with an sms_url")
            to = hooked[0].phone_number
        media = request.get("media") or ()
        try:
            media = [(str(u), str(t)) for u, t in media]
        except (TypeError, ValueError):
            raise SandboxError("'media' is a list of [url, content_type] pairs") from None
        media_files = []
        for item in request.get("media_files") or ():
            try:
                content = base64.b64decode(str(item["content_base64"]), validate=True)
                media_files.append((content, str(item["content_type"])))
            except (TypeError, KeyError, binascii.Error):
                raise SandboxError(
                    "'media_files' is a list of {\"content_base64\": ..., \"content_type\": ...} objects"
                ) from None
        profile_name = request.get("profile_name")
        default_from = WHATSAPP_PREFIX + DEMO_PEER if _is_whatsapp(str(to)) else DEMO_PEER
        result = self._deliver_inbound(
            from_=request.get("from") or default_from,
            to=to,
            body=str(request.get("body", "")),
            media=media,
            account_sid=request.get("account_sid"),
            message_sid=request.get("message_sid"),
            extra=request.get("extra"),
            signature=None,
            url=request.get("url"),
            media_files=media_files,
            profile_name=None if profile_name is None else str(profile_name),
        )
        return {
            "status": result["status"],
            "body": result["body"],
            "message_sid": result["message_sid"],
            "messages_before": result["messages_before"],
            "media_urls": [v for k, v in result["form"].items() if re.fullmatch(r"MediaUrl\d+", k)],
        }

    def _info(self) -> dict:
        with self._lock:
            return {
                "url": self.url,
                "accounts": [{"sid": a.sid, "type": a.type, "status": a.status} for a in self._accounts.values()],
                "numbers": [
                    {"phone_number": n.phone_number, "account_sid": n.account_sid, "sms_url": n.sms_url}
                    for n in self._numbers
                ],
                "whatsapp_senders": [
                    {"address": WHATSAPP_PREFIX + n.phone_number, "account_sid": n.account_sid, "sms_url": n.sms_url}
                    for n in self._numbers
                    if n.whatsapp
                ],
                "messages": len(self._messages),
            }

    # -- convenience ------------------------------------------------------------------

    def twilio_client(self, account_sid: str | None = None, auth_token: str | None = None, **kwargs: Any):
        """A ``twilio.rest.Client`` whose REST calls go to this sandbox.

        ``account_sid`` defaults to the only (or first) account; ``auth_token`` to its
        token. The client's ``api`` domain ``base_url`` is pointed at :attr:`url`, and any
        TWILIO_EDGE / TWILIO_REGION from the environment is cleared (they would rewrite
        the sandbox's host name).
        """
        from twilio.rest import Client

        with self._lock:
            if account_sid is None:
                if not self._accounts:
                    raise RuntimeError("the sandbox has no account: add_account() first")
                account_sid = next(iter(self._accounts))
            account = self._account(account_sid)
        client = Client(account.sid, auth_token or account.auth_token, **kwargs)
        client.edge = None
        client.region = None
        client.api.base_url = self.url
        return client

    # -- internals (called from handler threads) ----------------------------------------

    def _account(self, sid: str) -> Account:
        try:
            return self._accounts[sid]
        except KeyError:
            raise ValueError(f"no sandbox account {sid}") from None

    def _number_by_phone(self, phone_number: str) -> Number | None:
        for number in self._numbers:
            if number.phone_number == phone_number:
                return number
        return None

    def _authenticate(self, user: str | None, password: str | None) -> Account | None:
        if not user or password is None:
            return None
        with self._lock:
            account = self._accounts.get(user)
        if account is None:
            hmac.compare_digest(password.encode(), b"x" * 32)  # same work either way
            return None
        if not hmac.compare_digest(password.encode("utf-8"), account.auth_token.encode("utf-8")):
            return None
        return account

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _record_request(self, record: dict, message: dict | None = None) -> None:
        with self._changed:
            self._requests.append(record)
            if message is not None:
                stored = {
                    "index": len(self._messages) + 1,
                    "sid": message["sid"],
                    "account_sid": message["account_sid"],
                    "auth_user": record["auth_user"],
                    "form": dict(record["form"]),
                    "form_multi": copy.deepcopy(record["form_multi"]),
                    "response": copy.deepcopy(message),
                    "received_at": record["received_at"],
                    # Where the message is now (an SMS stays queued: nothing delivers it).
                    "channel": "sms",
                    "status": message["status"],
                    "statuses": [message["status"]],
                    "error_code": None,
                    "error_message": None,
                }
                job = self._jobs.get(message["sid"])
                if job is not None:
                    stored.update(
                        channel="whatsapp",
                        template=job["template"],
                        window_open=job["window_open"],
                        media_fetched=[],
                        media_delivered=job["media"][0] if job["media"] else None,
                        media_ignored=list(job["media"][1:]),  # Twilio sends one media on WhatsApp
                    )
                self._messages.append(stored)
            self._changed.notify_all()

    # -- WhatsApp internals ---------------------------------------------------------------

    def _media_location(self, account_sid: str, message_sid: str, media_sid: str) -> tuple[str | None, str]:
        """Where a media URL redirects to (None: no such media)."""
        with self._lock:
            media = self._media.get((account_sid, message_sid, media_sid))
        if media is None:
            return None, media_sid
        return media.redirect_to or f"{self.url}{_CDN_PREFIX}{media.token}", media.sid

    def _media_by_token(self, token: str) -> _Media | None:
        with self._lock:
            return self._cdn.get(token)

    def _create_whatsapp_message(self, account: Account, form: dict[str, list[str]]) -> dict:
        """Messages.json with a whatsapp: From or To: checked now, settled by _run_job."""
        fields = _last_values(form)
        to = fields.get("To", "")
        if not to:
            raise _Reply(400, 21604, "A 'To' phone number is required.")
        user = _whatsapp_e164(to)
        if user is None:
            raise _Reply(400, 21211, f"Invalid 'To' Phone Number: {to}")
        from_ = fields.get("From", "")
        if not from_:  # a Messaging Service choosing a WhatsApp sender is not simulated
            raise _Reply(400, 21603, "A 'From' phone number is required.")
        sender = _whatsapp_e164(from_)
        with self._lock:
            number = self._number_by_phone(sender) if sender else None
        if number is None or number.account_sid != account.sid or not number.whatsapp:
            raise _Reply(400, 63007, "Twilio could not find a Channel with the specified From address")
        body = fields.get("Body", "")
        media = [u for u in form.get("MediaUrl", []) if u]
        template = bool(fields.get("ContentSid"))  # a Content API template: allowed outside the window
        if not body and not media and not template:
            raise _Reply(400, 21602, "Message body is required.")
        if len(body) > 1600:
            raise _Reply(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        if len(media) > 10:
            raise _Reply(400, 21623, "The number of media files associated with the message exceeds the limit of 10.")

        sid = _sid("MM" if media else "SM")
        created = _rfc2822(_now())
        base = f"/{API_VERSION}/Accounts/{account.sid}/Messages/{sid}"
        service = fields.get("MessagingServiceSid", "")
        payload = {
            "account_sid": account.sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": created,
            "date_sent": None,
            "date_updated": created,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": from_,
            "messaging_service_sid": service or None,
            "num_media": str(len(media)),
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {"media": f"{base}/Media.json"},
            "to": to,
            "uri": f"{base}.json",
        }
        with self._lock:
            self._jobs[sid] = {
                "sid": sid,
                "account_sid": account.sid,
                "from": from_,
                "to": to,
                "user": user,
                "sender": sender,
                "media": media,
                "template": template,
                "window_open": template or self.window_open(user, sender),
                "status_callback": fields.get("StatusCallback") or None,
            }
        return payload

    def _start_job(self, sid: str) -> None:
        """After the 201 went out: settle a WhatsApp message in the background, like Twilio."""
        with self._lock:
            job = self._jobs.pop(sid, None)
            if job is None or self._stopping.is_set():
                return
            worker = threading.Thread(target=self._run_job, args=(job,), name=f"twilio-sandbox-wa:{sid}", daemon=True)
            self._workers.add(worker)
            worker.start()  # under the lock: stop() must not find (and join) a worker not yet started

    def _run_job(self, job: dict) -> None:
        try:
            if not job["window_open"]:
                self._settle(job, "failed", _WA_OUTSIDE_WINDOW)
                return
            fetched = []
            for url in job["media"]:
                if self._stopping.is_set():
                    return
                fetched.append(self._fetch_media(url))
            self._update_message(job["sid"], media_fetched=fetched)
            error = self._media_error(fetched[0]) if fetched else None  # only the first is delivered
            if error is not None:
                self._settle(job, "failed", error)
                return
            self._settle(job, "sent")
            if not self._stopping.is_set():
                self._settle(job, "delivered")
        except Exception:  # pragma: no cover - a sandbox bug must not pass silently
            log.exception("the sandbox failed settling WhatsApp message %s", job["sid"])
        finally:
            with self._lock:
                self._workers.discard(threading.current_thread())

    def _update_message(self, sid: str, **changes: Any) -> None:
        with self._changed:
            for message in self._messages:
                if message["sid"] == sid:
                    message.update(changes)
                    break
            self._changed.notify_all()

    def _settle(self, job: dict, status: str, error: tuple[int, str] | None = None) -> None:
        code, text = error if error else (None, None)
        with self._changed:
            for message in self._messages:
                if message["sid"] == job["sid"]:
                    message["status"] = status
                    message["statuses"].append(status)
                    message["error_code"], message["error_message"] = code, text
                    break
            self._changed.notify_all()
        if job["status_callback"] and not self._stopping.is_set():
            self._post_status_callback(job, status, code, text)

    def _post_status_callback(self, job: dict, status: str, code: int | None, text: str | None) -> None:
        url = job["status_callback"]
        with self._lock:
            account = self._accounts.get(job["account_sid"])
            install = self._channel_installs.get(job["sender"]) or ""
        form = {
            "ChannelPrefix": "whatsapp",
            "ApiVersion": API_VERSION,
            "MessageStatus": status,
            "SmsSid": job["sid"],
            "SmsStatus": status,
            "ChannelInstallSid": install,
            "To": job["to"],
            "From": job["from"],
            "MessageSid": job["sid"],
            "AccountSid": job["account_sid"],
            "ChannelToAddress": _mask_number(job["user"]),
        }
        if code is not None:
            form["ErrorCode"] = str(code)
            form["ErrorMessage"] = text or ""
        record = {
            "message_sid": job["sid"],
            "url": url,
            "method": "POST",
            "form": dict(form),
            "status": None,
            "body": None,
            "error": None,
            "posted_at": time.time(),
        }
        if account is None:
            record["error"] = "the account is gone"
        elif not _is_local_url(url, (self.host,)):
            record["error"] = "not posted: the sandbox only reaches loopback URLs, never the internet"
        else:
            headers = {
                "User-Agent": "TwilioProxy/1.1",
                "Accept": "*/*",
                "Cache-Control": "max-age=259200",
                "Content-Type": "application/x-www-form-urlencoded",
                "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
                "X-Twilio-Signature": RequestValidator(account.auth_token).compute_signature(url, form),
            }
            data = urllib.parse.urlencode(form).encode("utf-8")
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                record["status"], record["body"] = _http_exchange(request, url, CALLBACK_TIMEOUT, "the status callback")
            except (ConnectionError, TimeoutError) as exc:
                record["error"] = str(exc)
        if record["error"]:
            log.info("status callback %s for %s: %s", status, job["sid"], record["error"])
        with self._changed:
            self._callbacks.append(record)
            self._changed.notify_all()

    def _fetch_media(self, url: str) -> dict:
        """Twilio fetching an outbound MediaUrl: a plain GET, no auth, no redirects, bounded."""
        entry: dict[str, Any] = {
            "url": url, "status": None, "content_type": None, "size": None, "sha256": None, "error": None,
        }
        if not _is_local_url(url, (self.host,)):
            entry["error"] = "not fetched: the sandbox only reaches loopback URLs, never the internet"
            return entry
        request = urllib.request.Request(url, headers={"User-Agent": "TwilioProxy/1.1", "Accept": "*/*"}, method="GET")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        deadline = time.monotonic() + MEDIA_FETCH_TIMEOUT
        limit = WHATSAPP_MAX_MEDIA_BYTES
        try:
            with opener.open(request, timeout=MEDIA_FETCH_TIMEOUT) as response:
                entry["status"] = response.status
                entry["content_type"] = _media_type(response.headers.get("Content-Type"))
                digest, size = hashlib.sha256(), 0
                while size <= limit:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the media {url} took longer than {MEDIA_FETCH_TIMEOUT:g}s")
                    chunk = response.read(min(65536, limit + 1 - size))
                    if not chunk:
                        break
                    digest.update(chunk)
                    size += len(chunk)
                entry["size"] = size
                if size > limit:  # not read to the end: the declared length, if any
                    declared = response.headers.get("Content-Length", "")
                    entry["size"] = int(declared) if declared.isdigit() and int(declared) > size else size
                else:
                    entry["sha256"] = digest.hexdigest()
        except urllib.error.HTTPError as exc:
            entry["status"] = exc.code
            entry["content_type"] = _media_type(exc.headers.get("Content-Type")) if exc.headers else None
            if 300 <= exc.code < 400:
                entry["location"] = exc.headers.get("Location")
            exc.close()
        except (socket.timeout, TimeoutError) as exc:
            entry["error"] = f"timed out: {exc}"
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            entry["error"] = str(getattr(exc, "reason", exc))
        return entry

    @staticmethod
    def _media_error(entry: dict) -> tuple[int, str] | None:
        """Why WhatsApp would refuse this fetched media (None: it goes)."""
        if entry["error"] or entry["status"] != 200:
            return _WA_MEDIA_DOWNLOAD
        content_type = entry["content_type"] or ""
        if not _whatsapp_type_ok(content_type):
            return _WA_MEDIA_TYPE
        limit = WHATSAPP_MAX_IMAGE_BYTES if content_type.startswith("image/") else WHATSAPP_MAX_MEDIA_BYTES
        if entry["size"] is None or entry["size"] > limit:
            return _WA_MEDIA_SIZE
        return None

    def _list_numbers(self, account: Account, path: str, query: dict[str, list[str]]) -> dict:
        q = _last_values(query)
        with self._lock:
            numbers = [n for n in self._numbers if n.account_sid == account.sid]
        filters: list[tuple[str, str]] = []
        if q.get("FriendlyName"):
            filters.append(("FriendlyName", q["FriendlyName"]))
            numbers = [n for n in numbers if n.friendly_name == q["FriendlyName"]]
        if q.get("PhoneNumber"):
            wanted = q["PhoneNumber"]
            filters.append(("PhoneNumber", wanted))
            if E164.match(wanted):
                numbers = [n for n in numbers if n.phone_number == wanted]
            else:  # partial number, '*' standing for any one digit
                pattern = re.compile(re.escape(wanted).replace(r"\*", r"\d"))
                numbers = [n for n in numbers if pattern.search(n.phone_number)]
        try:
            page_size = min(1000, max(1, int(q.get("PageSize", "50"))))
        except ValueError:
            page_size = 50
        try:
            page = max(0, int(q.get("Page", "0")))
        except ValueError:
            page = 0
        start = page * page_size
        items = numbers[start : start + page_size]

        def page_uri(n: int, token: str | None = None) -> str:
            params = filters + [("PageSize", str(page_size)), ("Page", str(n))]
            if token:
                params.append(("PageToken", token))
            return f"{path}?{urllib.parse.urlencode(params)}"

        has_next = start + page_size < len(numbers)
        return {
            "end": start + len(items) - 1 if items else start,
            "first_page_uri": page_uri(0),
            "incoming_phone_numbers": [n.to_json() for n in items],
            "next_page_uri": page_uri(page + 1, "PA" + items[-1].sid) if has_next and items else None,
            "page": page,
            "page_size": page_size,
            "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            "start": start,
            "uri": page_uri(page),
        }

    def _create_message(self, account: Account, form: dict[str, list[str]]) -> dict:
        fields = _last_values(form)
        if _is_whatsapp(fields.get("To")) or _is_whatsapp(fields.get("From")):
            return self._create_whatsapp_message(account, form)
        to = fields.get("To", "")
        if not to:
            raise _Reply(400, 21604, "A 'To' phone number is required.")
        if not E164.match(to):
            raise _Reply(400, 21211, f"Invalid 'To' Phone Number: {to}")

        from_ = fields.get("From", "")
        service = fields.get("MessagingServiceSid", "")
        if not from_ and not service:
            raise _Reply(400, 21603, "A 'From' phone number is required.")
        if from_:
            with self._lock:
                number = self._number_by_phone(from_)
            if number is None or number.account_sid != account.sid or not number.capabilities.get("sms"):
                raise _Reply(
                    400,
                    21606,
                    f"The From phone number {from_} is not a valid, SMS-capable inbound phone number "
                    "or short code for your account.",
                )
        elif not _SERVICE_SID.match(service):
            raise _Reply(400, 21705, "The Messaging Service is invalid")

        body = fields.get("Body", "")
        media = [u for u in form.get("MediaUrl", []) if u]
        if not body and not media:
            raise _Reply(400, 21602, "Message body is required.")
        if len(body) > 1600:
            raise _Reply(400, 21617, "The concatenated message body exceeds the 1600 character limit.")

        with self._lock:
            opted_out = to in self._opted_out
            unverified = account.type == "Trial" and to not in account.verified_caller_ids
        if opted_out:
            raise _Reply(400, 21610, "Attempt to send to unsubscribed recipient")
        if unverified:
            raise _Reply(
                400,
                21608,
                f"The number {to} is unverified. Trial accounts cannot send messages to unverified numbers; "
                f"verify {to} at twilio.com/user/account/phone-numbers/verified, or purchase a Twilio number "
                "to send messages to unverified numbers",
            )

        sid = _sid("SM")
        created = _rfc2822(_now())
        base = f"/{API_VERSION}/Accounts/{account.sid}/Messages/{sid}"
        segments = count_segments(body)
        return {
            "account_sid": account.sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": created,
            "date_sent": None,  # a queued message has not been sent yet
            "date_updated": created,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": from_ or None,
            "messaging_service_sid": service or None,
            "num_media": str(len(media)),
            "num_segments": str(max(1, segments) if media else segments),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {"media": f"{base}/Media.json"},
            "to": to,
            "uri": f"{base}.json",
        }


def demo_sandbox(
    host: str = "127.0.0.1", port: int = 0, sms_url: str | None = None, whatsapp_url: str | None = None
) -> Sandbox:
    """A started sandbox with the demo account (DEMO_ACCOUNT_SID / DEMO_AUTH_TOKEN, Full)
    owning DEMO_NUMBER and DEMO_SPARE_NUMBER, whose incoming texts go to ``sms_url``, and the
    WhatsApp sender DEMO_WHATSAPP_NUMBER, whose incoming WhatsApp messages go to ``whatsapp_url``."""
    sandbox = Sandbox(host, port)
    sandbox.add_account(DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, type="Full", friendly_name="Sophon sandbox (demo)")
    sandbox.add_number(DEMO_ACCOUNT_SID, DEMO_NUMBER, sms_url=sms_url, mms=True)
    sandbox.add_number(DEMO_ACCOUNT_SID, DEMO_SPARE_NUMBER, sms_url=sms_url)
    sandbox.add_number(DEMO_ACCOUNT_SID, DEMO_WHATSAPP_NUMBER, sms_url=whatsapp_url, whatsapp=True)
    sandbox.verify_caller_id(DEMO_ACCOUNT_SID, DEMO_PEER)
    return sandbox.start()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sophon_sms_twilio.sandbox",
        description="Run a local Twilio sandbox (REST API + a simulated phone) until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8089, help="port to listen on, 0 for any free one (default: 8089)")
    parser.add_argument("--sms-url", default=None, help="webhook that incoming texts to the demo number are posted to")
    parser.add_argument(
        "--whatsapp-url", default=None, help="webhook that incoming WhatsApp messages to the demo sender are posted to"
    )
    args = parser.parse_args(argv)

    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sandbox = demo_sandbox(args.host, args.port, args.sms_url, args.whatsapp_url)
    try:
        print(f"Twilio sandbox listening on {sandbox.url}", flush=True)
        print(f"  Account SID : {DEMO_ACCOUNT_SID}", flush=True)
        print(f"  Number      : {DEMO_NUMBER} -> {args.sms_url or '(no sms_url: incoming texts are not delivered)'}", flush=True)
        print(
            f"  WhatsApp    : {WHATSAPP_PREFIX}{DEMO_WHATSAPP_NUMBER} -> "
            f"{args.whatsapp_url or '(no whatsapp url: incoming WhatsApp messages are not delivered)'}",
            flush=True,
        )
        print(f"  Phone       : {DEMO_PEER} (the simulated handset)", flush=True)
        print("  Auth token  : sophon_sms_twilio.sandbox.DEMO_AUTH_TOKEN (not printed)", flush=True)
        print(f"  Text it     : POST {sandbox.url}/_sandbox/inbound {{\"body\": \"hello\"}}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print("Twilio sandbox stopped.", flush=True)
    return 0
