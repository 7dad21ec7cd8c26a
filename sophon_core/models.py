"""The data every channel shares: channels, messages, results.

Plugins receive and return these objects; nothing here knows about any
particular channel.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class ChannelType:
    """What a plugin declares about one channel type (see ``sophon_channel_types``).

    :param name: the ``type`` value in ``channels.json`` and the URL segment of
        its webhook, e.g. ``sms`` -> ``/api/channels/sms/webhook``.
    :param display_name: shown to people, e.g. ``SMS (Twilio)``.
    :param config_schema: JSON Schema (draft 2020-12) of the channel's ``config``
        object. The single source of truth: validation, docs, dashboard form.
        Properties marked ``"writeOnly": true`` are secrets: never echoed.
    :param address_field: the ``config`` property naming the address the channel
        answers on (a phone number for SMS). Two channels of one type may not
        claim the same address.
    :param max_text_length: the longest text one provider message may carry, in
        UTF-16 code units; the core splits longer replies (see ``textsplit``) and
        calls ``send`` once per part. ``None``: never split.
    :param count_units: billing units one outbound text costs (SMS: segments), for
        the daily budget, pacing and usage counters. ``None``: one per message.
    :param default_send_rate: units per second one address may send (SMS long
        code: 1 segment/s); a channel's ``limits.sendRate`` overrides it.
        ``None``: no pacing.
    :param public_url_field: the ``config`` property (if any) holding a per-channel
        public base URL that overrides ``SOPHON_PUBLIC_URL`` (SMS: ``publicUrl``); the
        dashboard and API show ``<base><webhook_path>`` as the URL to give the provider.
    :param routes: extra Falcon routes, ``{path: resource}`` (e.g. a delivery status
        callback); the core mounts them next to the webhook and refuses to start if a
        path is already taken. Resources find the runtime in ``req.context.runtime``.
    :param max_attachments: files one provider message may carry (0: the channel sends
        text only, and attachments an agent returns are dropped with a log line). The core
        gives the first part of a reply the first files and sends any others as extra
        file-only messages.
    """

    name: str
    display_name: str
    config_schema: Mapping[str, Any]
    address_field: str | None = None
    max_text_length: int | None = None
    count_units: Callable[[str], int] | None = None
    default_send_rate: float | None = None
    public_url_field: str | None = None
    routes: Mapping[str, Any] = field(default_factory=dict)
    max_attachments: int = 0

    def units(self, text: str) -> int:
        return max(1, self.count_units(text)) if self.count_units else 1

    @property
    def webhook_path(self) -> str:
        return f"/api/channels/{self.name}/webhook"

    @property
    def secret_fields(self) -> frozenset[str]:
        props = self.config_schema.get("properties", {})
        return frozenset(k for k, v in props.items() if v.get("writeOnly"))


@dataclass(frozen=True)
class Routing:
    agent_id: str = "default"
    dm_behavior: str = "main-session"  # or "per-peer"


@dataclass(frozen=True)
class Limits:
    """A channel's guards against abuse and runaway cost (``limits`` in channels.json).

    :param send_rate: units per second this channel's address may send (``None``:
        the type's default).
    :param inbound_per_sender_per_hour: messages one sender may send before the
        agent stops answering them for the hour.
    :param daily_outbound_units: units (SMS segments) the channel may send per UTC day.
    """

    send_rate: float | None = None
    inbound_per_sender_per_hour: int = 60
    daily_outbound_units: int = 2000


@dataclass(frozen=True)
class Channel:
    """One validated entry of ``channels.json``."""

    id: str
    type: str
    name: str
    enabled: bool
    config: Mapping[str, Any] = field(repr=False)
    routing: Routing = Routing()
    status: str | None = None
    address: str | None = None  # config[ChannelType.address_field], set by the loader
    access: str = "open"  # or "allowlist"
    allow: frozenset[str] = frozenset()
    limits: Limits = Limits()

    def admits(self, sender: str) -> bool:
        return self.access == "open" or sender in self.allow


@dataclass(frozen=True)
class DroppedAttachment:
    """An attachment the channel received but cannot hand to the agent.

    :param reason: why, in words (e.g. "larger than 25 MB"); empty when the channel
        cannot receive files at all.
    """

    content_type: str
    reason: str = ""


@dataclass(frozen=True)
class Attachment:
    """A file in a message, inbound or outbound.

    Inbound: ``handle_inbound`` names each file the provider holds (``url``,
    ``content_type``); the core fetches it later, outside the webhook request, through
    the ``fetch_attachment`` hook, keeps it under ``SOPHON_DATA_DIR/media`` and hands
    the agent the same attachment with ``path`` (and ``size``) set.

    Outbound: an agent returns ``Reply(text, attachments=[Attachment(content_type, path=...
    or data=...)])``; the core keeps a copy and gives ``send`` attachments whose ``url``
    is a short-lived signed URL of this server (``GET /media/...``) for the provider to
    fetch.
    """

    content_type: str
    url: str | None = None
    path: str | None = None
    filename: str | None = None
    size: int | None = None
    data: bytes | None = field(default=None, repr=False)

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.path is None:
            raise ValueError("this attachment has neither data nor a path (fetch it first)")
        with open(self.path, "rb") as fh:
            return fh.read()


@dataclass(frozen=True)
class InboundMessage:
    """A message someone sent to one of our channels.

    :param provider_message_id: the provider's id (Twilio ``MessageSid``); the
        pair (channel_id, provider_message_id) identifies the message.
    :param canned_reply: when set, the pipeline sends this text back without
        running the agent (e.g. "text only" for a media-only SMS).
    :param intent: ``message`` (answer it), ``opt_out`` (the sender asked for no
        more messages: record it, never answer), ``opt_in`` (consent given back)
        or ``help`` (the provider answers it; no agent).
    :param units: billing units the message cost (SMS segments).
    :param attachments: files the sender attached (see ``Attachment``); the agent gets
        them fetched, with ``path`` set. Files that could not be fetched or are not allowed
        are moved to ``dropped_attachments`` with the reason.
    :param metadata: what the provider says about the sender (e.g. a profile name).
    """

    channel_id: str
    provider_message_id: str
    sender: str
    recipient: str
    text: str
    received_at: float = field(default_factory=time.time)
    dropped_attachments: tuple[DroppedAttachment, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    canned_reply: str | None = None
    intent: str = "message"
    units: int = 1
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class Reply:
    """What an agent may return instead of plain text: text plus files.

    ``text`` may be empty when there are attachments.
    """

    text: str = ""
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class OutboundMessage:
    """One provider message to send. ``attachments`` (at most ``ChannelType.max_attachments``)
    carry a ``url`` the provider can fetch, valid for a few minutes, plus content type and size."""

    channel_id: str
    recipient: str
    text: str
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class SentPart:
    """The provider message ``send`` created."""

    provider_message_id: str
    text: str
    status: str = "queued"


@dataclass(frozen=True)
class ConnectionResult:
    """What ``test_connection`` found, in words a user can act on.

    :param ok: True when the channel can receive and send.
    :param checks: each line a finding, e.g. ``("ok", "Account AC… is active")``
        or ``("error", "Authentication error: …")``; levels ok/warning/error.
    """

    ok: bool
    checks: tuple[tuple[str, str], ...] = ()

    @property
    def status(self) -> str:
        if self.ok:
            return "connected"
        reason = next((m for lvl, m in self.checks if lvl == "error"), "failed")
        return f"error: {reason}"


@dataclass(frozen=True)
class WebhookReply:
    """What ``handle_inbound`` returns: the HTTP answer plus the messages to process.

    The core commits ``messages`` to the pipeline, then answers with
    ``status``/``body``/``content_type``; the agent never runs inside the request.
    ``idempotency_key``: the provider's id of this delivery (e.g. Twilio's
    I-Twilio-Idempotency-Token); a delivery whose key was processed before is
    answered the same way and its messages are not accepted again.
    """

    body: str = ""
    content_type: str = "text/plain"
    status: int = 200
    messages: tuple[InboundMessage, ...] = ()
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Turn:
    """One entry of a session's history handed to an agent."""

    role: str  # "user" or "agent"
    text: str
    sender: str
    at: float
