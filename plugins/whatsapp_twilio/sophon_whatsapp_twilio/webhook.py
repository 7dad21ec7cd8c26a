"""Inbound WhatsApp webhooks and delivery reports: Twilio's signature, the channel, the fields.

Twilio posts WhatsApp messages like SMS, with ``whatsapp:+E164`` addresses, the
sender's ``ProfileName`` and ``WaId``, and up to 10 ``MediaUrl{N}`` files. The
files are not fetched here (the webhook must answer fast): they become
``Attachment`` references that the core fetches later through ``fetch_attachment``.
"""
from __future__ import annotations

import logging
from typing import Sequence

import falcon

from sophon_core.errors import WebhookRejected
from sophon_core.models import Attachment, Channel, DroppedAttachment, InboundMessage, WebhookReply
from sophon_core.pipeline import record_delivery_status
from sophon_core.resources import read_body
from sophon_core.settings import Settings
from sophon_sms_twilio.webhook import BAD_SIGNATURE, EMPTY_TWIML, Form, parse_form, verify_signature

from .errors import delivery_error
from .media import MAX_FILES, media_type_refusal

log = logging.getLogger("sophon.whatsapp")

PREFIX = "whatsapp:"
TYPE = "whatsapp"
WEBHOOK_PATH = f"/api/channels/{TYPE}/webhook"
STATUS_PATH = f"/api/channels/{TYPE}/status"
NO_CHANNEL = "no active WhatsApp channel for this sender (is the channel activated in Sophon?)"
REQUIRED = ("MessageSid", "From", "To")

# Twilio does not handle opt-out keywords on WhatsApp; Sophon honours these itself (the
# agent is not asked and nothing more is sent until START). HELP goes to the agent.
OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT"})
OPT_IN = frozenset({"START", "UNSTOP"})


def intent_of(body: str) -> str:
    word = body.strip().upper()
    return "opt_out" if word in OPT_OUT else "opt_in" if word in OPT_IN else "message"


def bare(address: str) -> str:
    """``whatsapp:+1555...`` -> ``+1555...``"""
    return address[len(PREFIX):] if address.startswith(PREFIX) else address


def public_base(channel: Channel, settings: Settings) -> str | None:
    base = (channel.config.get("publicUrl") or settings.public_url or "").rstrip("/")
    return base or None


def status_callback_url(channel: Channel, settings: Settings) -> str | None:
    base = public_base(channel, settings)
    return base + STATUS_PATH if base else None


def _verify(req: falcon.Request, form: Form, candidates: Sequence[Channel], settings: Settings) -> Channel:
    signature = req.get_header("X-Twilio-Signature")
    if not signature:
        raise WebhookRejected(403, BAD_SIGNATURE, "missing X-Twilio-Signature header: only Twilio may "
                              "call this webhook")
    return verify_signature(req, form, signature, candidates, settings)


def handle(req: falcon.Request, channels: Sequence[Channel], settings: Settings) -> WebhookReply:
    """Check, route and parse one inbound WhatsApp webhook (see ``hookspecs.handle_inbound``)."""
    form = parse_form(req)
    to, account = form.first("To"), form.first("AccountSid")
    if to:
        candidates = [c for c in channels if c.config["phoneNumber"] == bare(to)]
    else:  # only to verify the signature before answering 400
        candidates = [c for c in channels if account and c.config["accountSid"] == account]
    if not candidates:
        if not to:
            raise WebhookRejected(400, "missing required field(s): To")
        raise WebhookRejected(404, NO_CHANNEL, f"no WhatsApp channel in channels.json has phoneNumber "
                              f"{bare(to)}; add one and activate it")
    channel = _verify(req, form, candidates, settings)
    missing = [name for name in REQUIRED if not form.first(name)]
    if missing:
        raise WebhookRejected(400, f"missing required field(s): {', '.join(missing)}")
    if not to.startswith(PREFIX) or not form.first("From").startswith(PREFIX):
        raise WebhookRejected(400, "not a WhatsApp message (From and To must start with whatsapp:); "
                              "SMS goes to /api/channels/sms/webhook")
    if account and account != channel.config["accountSid"]:
        raise WebhookRejected(404, NO_CHANNEL, f"{bare(to)} is configured in channel {channel.id!r} for "
                              f"account {channel.config['accountSid']}, but the webhook is from {account}")
    if not channel.enabled:
        raise WebhookRejected(404, NO_CHANNEL, f"the WhatsApp channel {channel.id!r} for {bare(to)} is not "
                              "activated (set \"enabled\": true in channels.json)")
    return WebhookReply(body=EMPTY_TWIML, content_type="text/xml", messages=(message_of(channel, form),),
                        idempotency_key=req.get_header("I-Twilio-Idempotency-Token"))


def message_of(channel: Channel, form: Form) -> InboundMessage:
    try:
        num_media = max(0, int(form.first("NumMedia", "0") or 0))
    except ValueError:
        num_media = 0
    files, dropped = [], []
    for i in range(min(num_media, 100)):
        url, ctype = form.first(f"MediaUrl{i}"), form.first(f"MediaContentType{i}", "application/octet-stream")
        refusal = media_type_refusal(ctype) if url else "the webhook named no URL for it"
        if refusal is None and len(files) >= MAX_FILES:
            refusal = f"more than {MAX_FILES} files in one message"
        if refusal:
            dropped.append(DroppedAttachment(ctype, refusal))
        else:
            files.append(Attachment(ctype, url=url))
    body = form.first("Body")
    meta = {key: form.first(field) for key, field in (("profileName", "ProfileName"), ("waId", "WaId"))
            if form.first(field)}
    return InboundMessage(channel_id=channel.id, provider_message_id=form.first("MessageSid"),
                          sender=form.first("From"), recipient=form.first("To"), text=body,
                          attachments=tuple(files), dropped_attachments=tuple(dropped), metadata=meta,
                          intent=intent_of(body) if not (files or dropped) else "message")


class StatusCallback:
    """``POST /api/channels/whatsapp/status``: Twilio's delivery reports, checked like webhooks.

    A reply outside WhatsApp's 24-hour customer service window is accepted by Twilio's
    API and then reported here as ``failed`` with error 63016: it is recorded on the
    message in words that say a template is needed, and logged as an ERROR.
    """

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        runtime = req.context.runtime
        settings = runtime.settings
        req.context.body = read_body(req, settings.max_body_bytes)
        form = parse_form(req)
        sender, account = bare(form.first("From")), form.first("AccountSid")
        channels = runtime.config.of_type(TYPE)
        candidates = ([c for c in channels if c.config["phoneNumber"] == sender]
                      or [c for c in channels if account and c.config["accountSid"] == account])
        if not candidates:
            raise WebhookRejected(404, NO_CHANNEL, f"status callback for {sender or account or '?'}, "
                                  "which no WhatsApp channel in channels.json has")
        channel = _verify(req, form, candidates, settings)
        sid, status = form.first("MessageSid"), form.first("MessageStatus")
        if not sid or not status:
            raise WebhookRejected(400, "missing required field(s): "
                                  + ", ".join(n for n, v in (("MessageSid", sid), ("MessageStatus", status)) if not v))
        code = form.first("ErrorCode")
        error = delivery_error(code) if code else None
        if error:
            log.error("WhatsApp message %s to %s on %s %s: %s", sid, form.first("To") or "?", channel.id,
                      status.lower(), error)
        if not record_delivery_status(runtime, channel.id, sid, status.lower(), error):
            log.info("status %s for %s ignored (unknown message, or older than what we know)", status, sid)
        resp.status = 200
        resp.content_type = "text/xml"
        resp.text = EMPTY_TWIML
