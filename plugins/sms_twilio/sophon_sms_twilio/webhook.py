"""Inbound SMS webhooks: Twilio's signature, the channel the message is for, its fields."""
from __future__ import annotations

import base64
import functools
import hmac
import logging
from typing import Sequence
from urllib.parse import unquote, urlparse

import falcon
from twilio.request_validator import add_port, remove_port

from sophon_core.errors import WebhookRejected
from sophon_core.models import Channel, DroppedAttachment, InboundMessage, WebhookReply
from sophon_core.pipeline import record_delivery_status
from sophon_core.resources import read_body
from sophon_core.settings import Settings

log = logging.getLogger("sophon.sms")

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
TEXT_ONLY_REPLY = ("This number handles text only: pictures and files can't be received here. "
                   "Please send your message as text.")
REQUIRED = ("MessageSid", "From", "To")

# Twilio's default opt-out handling for long codes and toll-free numbers answers these
# keywords itself; Sophon records them and never runs the agent on them.
OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN = frozenset({"START", "YES", "UNSTOP"})
HELP = frozenset({"HELP", "INFO"})


def intent_of(body: str) -> str:
    """``opt_out``, ``opt_in``, ``help`` for a message that is just that keyword (any case)."""
    word = body.strip().upper()
    if word in OPT_OUT:
        return "opt_out"
    if word in OPT_IN:
        return "opt_in"
    if word in HELP:
        return "help"
    return "message"
MAX_FIELDS = 200


class Form(dict):
    """Parsed form, ``name -> [values]``; ``getlist`` is what RequestValidator expects."""

    def getlist(self, name: str) -> list[str]:
        return self[name]

    def first(self, name: str, default: str = "") -> str:
        values = self.get(name)
        return values[0] if values else default


def parse_fields(text: str, max_fields: int = MAX_FIELDS) -> Form:
    """``parse_qs(text, keep_blank_values=True, max_num_fields=max_fields)`` as a ``Form``,
    without its per-field overhead (a webhook has about 20 fields, most without escapes).

    :raises ValueError: more than ``max_fields`` fields.
    """
    if not text:
        return Form()
    if text.count("&") + 1 > max_fields:
        raise ValueError(f"more than {max_fields} fields")
    form = Form()
    for piece in text.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        if "+" in name:
            name = name.replace("+", " ")
        if "%" in name:
            name = unquote(name)
        if "+" in value:
            value = value.replace("+", " ")
        if "%" in value:
            value = unquote(value)
        values = form.get(name)
        if values is None:
            form[name] = [value]
        else:
            values.append(value)
    return form


def parse_form(req: falcon.Request) -> Form:
    ctype = (req.content_type or "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise WebhookRejected(415, f"expected Content-Type application/x-www-form-urlencoded "
                              f"(Twilio's webhook format), got {req.content_type or 'none'}")
    try:
        text = req.context.body.decode("utf-8")
        return parse_fields(text)
    except UnicodeDecodeError:
        raise WebhookRejected(400, "request body is not UTF-8") from None
    except ValueError:
        raise WebhookRejected(400, f"request body has more than {MAX_FIELDS} form fields") from None


def signed_url(req: falcon.Request, channel: Channel, settings: Settings) -> str:
    """The URL Twilio signed: the channel's publicUrl, else SOPHON_PUBLIC_URL, else the request's.

    The request's own URL uses its Host header and the scheme the WSGI server
    determined (gunicorn honours X-Forwarded-Proto only from trusted proxies);
    X-Forwarded-Host is not trusted.
    """
    base = (channel.config.get("publicUrl") or settings.public_url or "").rstrip("/")
    if not base:
        return req.uri
    return base + req.path + (f"?{req.query_string}" if req.query_string else "")


NO_CHANNEL = "no active SMS channel for this number (is the channel activated in Sophon?)"
BAD_SIGNATURE = "invalid or missing X-Twilio-Signature"


def handle(req: falcon.Request, channels: Sequence[Channel], settings: Settings) -> WebhookReply:
    """Check, route and parse one inbound SMS webhook (see ``hookspecs.handle_inbound``).

    Responses say little (the caller may not be Twilio); the log says what to fix.
    """
    form = parse_form(req)
    to, account = form.first("To"), form.first("AccountSid")
    if to:
        candidates = [c for c in channels if c.config["phoneNumber"] == to]
    else:  # only to verify the signature before answering 400
        candidates = [c for c in channels if account and c.config["accountSid"] == account]
    if not candidates:
        if not to:
            raise WebhookRejected(400, "missing required field(s): To")
        raise WebhookRejected(404, NO_CHANNEL, f"no SMS channel in channels.json has phoneNumber {to}; "
                              "add one and activate it")

    signature = req.get_header("X-Twilio-Signature")
    if not signature:
        raise WebhookRejected(403, BAD_SIGNATURE, "missing X-Twilio-Signature header: only Twilio may "
                              "call this webhook")
    channel = verify_signature(req, form, signature, candidates, settings)
    missing = [name for name in REQUIRED if not form.first(name)]
    if missing:
        raise WebhookRejected(400, f"missing required field(s): {', '.join(missing)}")
    if account and account != channel.config["accountSid"]:
        raise WebhookRejected(404, NO_CHANNEL, f"{to} is configured in channel {channel.id!r} for "
                              f"account {channel.config['accountSid']}, but the webhook is from {account}")
    if not channel.enabled:
        raise WebhookRejected(404, NO_CHANNEL, f"the SMS channel {channel.id!r} for {to} is not "
                              "activated (set \"enabled\": true in channels.json)")
    return WebhookReply(body=EMPTY_TWIML, content_type="text/xml", messages=(_message(channel, form),),
                        idempotency_key=req.get_header("I-Twilio-Idempotency-Token"))


def _signed_fields(form: "Form") -> str:
    """What Twilio appends to the URL before signing: for each field name in sorted order,
    each of its distinct values in sorted order, as ``name + value``."""
    parts = []
    for name in sorted(form):
        values = form.getlist(name)
        if len(values) == 1:  # the usual case
            parts.append(name + values[0])
        else:
            parts.extend(name + value for value in sorted(set(values)))
    return "".join(parts)


def _sign(key: bytes, data: str) -> bytes:
    """Base64 of HMAC-SHA1 of ``data`` (UTF-8) keyed with ``key``."""
    return base64.b64encode(hmac.digest(key, data.encode("utf-8"), "sha1"))


def compute_signature(token: str, url: str, form: "Form") -> str:
    """Twilio's X-Twilio-Signature of a form posted to ``url``: the same string as
    ``RequestValidator(token).compute_signature(url, form)``, without the SDK's overhead."""
    return _sign(token.encode("utf-8"), url + _signed_fields(form)).decode("ascii")


@functools.lru_cache(maxsize=128)
def _url_forms(url: str) -> tuple[str, str]:
    """``url`` as requested (re-assembled by ``urlparse``, as the SDK does) and its other
    port form: ``add_port`` / ``remove_port`` of the SDK, whichever changes it. Cached: the
    URLs a deployment is called at are few (the bound keeps Host-header variety harmless)."""
    parsed = urlparse(url)
    if parsed.port:  # ValueError for a port that is not a number in 0-65535, as in the SDK
        return add_port(parsed), remove_port(parsed)
    return remove_port(parsed), add_port(parsed)


def signature_matches(token: str, url: str, form: "Form", signature: str) -> bool:
    """Twilio's check (``RequestValidator.validate``), one HMAC in the usual case.

    Twilio may sign the URL with or without an explicit port; the SDK's ``validate``
    accepts a signature of either form (``add_port``: the scheme's default port added
    when there is none; ``remove_port``: any port removed) and computes both on every
    request. Here the URL as requested is tried first and the other form only when that
    fails. Signatures are compared in constant time (``hmac.compare_digest``).
    """
    key = token.encode("utf-8")
    fields = _signed_fields(form)
    given = signature.encode("utf-8", "surrogatepass")
    first, second = _url_forms(url)
    if hmac.compare_digest(_sign(key, first + fields), given):
        return True
    return second != first and hmac.compare_digest(_sign(key, second + fields), given)


def verify_signature(req, form, signature, candidates, settings) -> Channel:
    """The channel among ``candidates`` whose Auth Token signed the request (any Twilio
    channel type). :raises WebhookRejected: 403, with the URLs checked in the log detail."""
    urls = []
    for channel in candidates:
        url = signed_url(req, channel, settings)
        try:
            if signature_matches(channel.config["authToken"], url, form, signature):
                return channel
        except ValueError:  # not a URL Twilio signs (e.g. a Host header whose port is not a number)
            pass
        urls.append(url)
    hint = "" if (settings.public_url or any(c.config.get("publicUrl") for c in candidates)) else (
        "; if Twilio calls a different URL (proxy, tunnel), set SOPHON_PUBLIC_URL")
    raise WebhookRejected(403, BAD_SIGNATURE, f"X-Twilio-Signature does not match; checked URL "
                          f"{', '.join(dict.fromkeys(urls))} with the Auth Token of channel "
                          f"{', '.join(c.id for c in candidates)}{hint}")


def _message(channel: Channel, form: Form) -> InboundMessage:
    try:
        num_media = max(0, int(form.first("NumMedia", "0") or 0))
    except ValueError:
        num_media = 0
    dropped = tuple(DroppedAttachment(form.first(f"MediaContentType{i}", "unknown"))
                    for i in range(min(num_media, 10)))
    body = form.first("Body")
    text, canned = body, None
    if dropped:
        kinds = ", ".join(d.content_type for d in dropped)
        note = (f"[The sender also attached {len(dropped)} file(s) ({kinds}); SMS is text only, "
                "so they were not received.]")
        if body.strip():
            text = f"{body}\n\n{note}"
        else:
            text, canned = note, TEXT_ONLY_REPLY
    meta = {k: form.first(k) for k in ("FromCity", "FromState", "FromCountry", "NumSegments") if form.first(k)}
    try:
        units = max(1, int(form.first("NumSegments", "1") or 1))
    except ValueError:
        units = 1
    return InboundMessage(channel_id=channel.id, provider_message_id=form.first("MessageSid"),
                          sender=form.first("From"), recipient=form.first("To"), text=text,
                          dropped_attachments=dropped, metadata=meta, canned_reply=canned,
                          intent=intent_of(body) if not dropped else "message", units=units)


STATUS_PATH = "/api/channels/sms/status"
DELIVERY_ERRORS = {
    "30003": "the handset is unreachable (off or out of coverage)",
    "30004": "the message was blocked (the recipient may have blocked the number)",
    "30005": "the number is unknown or no longer in service",
    "30006": "the number is a landline or its carrier cannot receive SMS",
    "30007": "the carrier filtered the message (spam rules; register your number or use a toll-free one)",
    "30008": "the carrier reported an unknown error",
}


def status_callback_url(channel: Channel, settings: Settings) -> str | None:
    """Where Twilio should report delivery: only when we know our public URL."""
    base = (channel.config.get("publicUrl") or settings.public_url or "").rstrip("/")
    return base + STATUS_PATH if base else None


class StatusCallback:
    """``POST /api/channels/sms/status``: Twilio's delivery reports, checked like inbound webhooks."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:

        runtime = req.context.runtime
        settings = runtime.settings
        req.context.body = read_body(req, settings.max_body_bytes)
        form = parse_form(req)
        sender, account = form.first("From"), form.first("AccountSid")
        channels = runtime.config.of_type("sms")
        candidates = ([c for c in channels if c.config["phoneNumber"] == sender]
                      or [c for c in channels if account and c.config["accountSid"] == account])
        if not candidates:
            raise WebhookRejected(404, NO_CHANNEL, f"status callback for {sender or account or '?'}, "
                                  "which no SMS channel in channels.json has")
        signature = req.get_header("X-Twilio-Signature")
        if not signature:
            raise WebhookRejected(403, BAD_SIGNATURE, "status callback without X-Twilio-Signature")
        channel = verify_signature(req, form, signature, candidates, settings)
        sid, status = form.first("MessageSid"), form.first("MessageStatus")
        if not sid or not status:
            raise WebhookRejected(400, "missing required field(s): "
                                  + ", ".join(n for n, v in (("MessageSid", sid), ("MessageStatus", status)) if not v))
        code = form.first("ErrorCode")
        error = f"Twilio {code}: {DELIVERY_ERRORS.get(code, 'delivery failed')}" if code else None
        if not record_delivery_status(runtime, channel.id, sid, status.lower(), error):
            log.info("status %s for %s ignored (unknown message, or older than what we know)", status, sid)
        resp.status = 200
        resp.content_type = "text/xml"
        resp.text = EMPTY_TWIML
